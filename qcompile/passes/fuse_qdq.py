"""fuse-qdq: dequantize -> op [-> activation] -> quantize becomes one integer op (int32 accumulate, requantize).

Works on qcompile's own q/dq and on PyTorch's `quantized_decomposed` ops (torchao PT2E's convert_pt2e).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..ir import meta
from ..ir.qspec import QParams
from ..ir.rewrite import Rewriter, constant
from ..quant.integer_lowering import FLOAT_OUTPUT_KINDS, LOWERINGS, Match
from ..quant.qdq import activation_source, is_quantize, parse_dequantize, parse_quantize
from ..quant.rules import FUSABLE_ACTIVATIONS, OpRule, rule_for
from .base import Pass, PassContext, PassResult, register_pass


def _split_activation(producer: fx.Node) -> tuple[fx.Node, fx.Node | None]:
    """(op, activation) when `producer` is an activation absorbed by the op before it."""
    if producer.target in FUSABLE_ACTIVATIONS and isinstance(producer.args[0], fx.Node):
        inner = producer.args[0]
        rule = rule_for(inner)
        if rule is not None and rule.fuses_activation and len(inner.users) == 1:
            return inner, producer
    return producer, None


def _integer_weight(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, QParams] | None:
    """A dequantized constant: dq(int constant) or dq(q(float constant)), the latter folded here."""
    dq = parse_dequantize(gm, node)
    if dq is None or dq.input.op not in ("get_attr", "call_function"):
        return None
    if dq.input.op == "get_attr":
        return constant(gm, dq.input), dq.qparams
    q = parse_quantize(gm, dq.input)
    if q is None or q.input.op != "get_attr":
        return None
    w = constant(gm, q.input).detach()
    return _fold_quantize(gm, dq.input, w), q.qparams


def _fold_quantize(gm: fx.GraphModule, q: fx.Node, w: torch.Tensor) -> torch.Tensor:
    args = [constant(gm, a) if isinstance(a, fx.Node) else a for a in q.args[1:]]
    with torch.no_grad():
        return q.target(w, *args)


def _match_output(gm: fx.GraphModule, q: fx.Node) -> tuple[OpRule, Match] | None:
    """dq -> op [-> activation] -> q"""
    out = parse_quantize(gm, q)
    if out is None or out.input.op != "call_function" or len(out.input.users) != 1 or out.qparams.per_channel:
        return None
    op, act = _split_activation(out.input)
    return _match(gm, op, act, q, out.qparams)


def _match_float_output(gm: fx.GraphModule, op: fx.Node) -> tuple[OpRule, Match] | None:
    """dq -> conv/linear whose result stays float (e.g. a model's last layer in a PT2E graph)."""
    rule = rule_for(op)
    if rule is None or rule.kind not in FLOAT_OUTPUT_KINDS:
        return None
    return _match(gm, op, None, None, None)


def _match(gm, op, act, q, out: QParams | None) -> tuple[OpRule, Match] | None:
    """The op's inputs, if they all arrive in one form that has a lowering for the op's kind."""
    rule = rule_for(op)
    if rule is None or rule.unsupported(op, weights_are_constants=False):
        return None
    sources = [activation_source(gm, a) for a in rule.activation_inputs(op)]
    forms = {form for form, _, _ in sources} or {"static"}
    if len(forms) != 1 or (rule.kind, *forms) not in LOWERINGS:
        return None
    inputs = [(node, qp) for _, node, qp in sources]
    weights = []
    for w, _ in rule.weight_inputs(op):
        iw = _integer_weight(gm, w)
        if iw is None:
            return None
        weights.append(iw)
    return rule, Match(op, act, q, inputs, weights, out, forms.pop())


@register_pass
@dataclass(frozen=True)
class FuseQdqPass(Pass):
    name = "fuse-qdq"
    requires = frozenset({"qdq"})
    provides = frozenset({"integer-ops"})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        rw = Rewriter(gm, self.name)
        changed = False
        for q in [n for n in gm.graph.nodes if is_quantize(n)]:
            changed |= self._lower(rw, ctx, _match_output(gm, q))
        gm.graph.eliminate_dead_code()  # the ops just replaced must not match again below
        for op in [n for n in gm.graph.nodes if n.op == "call_function"]:
            changed |= self._lower(rw, ctx, _match_float_output(gm, op))
        return PassResult(rw.finish() if changed else gm, changed)

    def _lower(self, rw: Rewriter, ctx: PassContext, found: tuple[OpRule, Match] | None) -> bool:
        if found is None:
            return False
        rule, m = found
        label = rule.kind if m.form == "static" else f"{rule.kind} ({m.form} inputs)"
        new = LOWERINGS[(rule.kind, m.form)](rw, m)
        if new is None:
            ctx.count(self.name, f"left float: {label}")
            return False
        replaced = m.q if m.q is not None else m.op
        if m.out is not None:
            meta.set_qparams(new, m.out)
        new.meta["val"] = replaced.meta.get("val")  # same shape and dtype as the node it replaces
        replaced.replace_all_uses_with(new)
        ctx.count(self.name, label if m.out is not None else f"{label} (float output)")
        return True
