"""insert-qdq: a quantize -> dequantize pair after every calibrated tensor, and a run-time fake-quantize in
front of every input of an op whose inputs are quantized dynamically (the fake-quant graph)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from ..ir import meta
from ..ir.rewrite import Rewriter
from ..quant.qdq import insert_dequantize, insert_dynamic_quantize, insert_quantize
from ..quant.rules import rule_for
from .base import Pass, PassContext, PassResult, register_pass


def _above_inputs(graph: fx.Graph) -> set[fx.Node]:
    """The nodes up to the last placeholder: nothing may be inserted among them."""
    nodes = list(graph.nodes)
    last = max((i for i, n in enumerate(nodes) if n.op == "placeholder"), default=-1)
    return set(nodes[: last + 1])


@register_pass
@dataclass(frozen=True)
class InsertQdqPass(Pass):
    name = "insert-qdq"
    requires = frozenset({"qparams"})
    provides = frozenset({"qdq"})
    repeatable = False  # a second run would quantize the quantized tensors again

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        rw = Rewriter(gm, self.name)
        changed = False
        above_inputs = _above_inputs(gm.graph)
        first_free = next(n for n in gm.graph.nodes if n not in above_inputs)
        for node in list(gm.graph.nodes):
            qp = meta.qparams(node)
            if qp is None or not node.users or meta.fused_into(node):
                continue
            users = list(node.users)
            anchor = first_free if node in above_inputs else node.next
            q = insert_quantize(rw, node, qp, anchor)
            dq = insert_dequantize(rw, q, qp, anchor)
            for u in users:
                u.replace_input_with(node, dq)
            ctx.count(self.name, "weight pairs" if node.op == "get_attr" else "activation pairs")
            changed = True
        changed |= _quantize_dynamic_inputs(rw, ctx, self.name)
        return PassResult(rw.finish() if changed else gm, changed)


def _quantize_dynamic_inputs(rw: Rewriter, ctx: PassContext, name: str) -> bool:
    """Only the op itself reads its input quantized (other readers keep the float value), so each such op
    gets its own fake-quantize."""
    ops = [n for n in rw.graph.nodes if meta.dynamic_inputs(n)]
    for op in ops:
        for x in rule_for(op).activation_inputs(op):
            op.replace_input_with(x, insert_dynamic_quantize(rw, x, op))
            ctx.count(name, "dynamic activations")
    return bool(ops)
