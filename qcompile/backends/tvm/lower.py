"""Lower qcompile's integer fx graph to a Relax module whose ops are TE-defined TIR functions."""
from __future__ import annotations

import operator

import torch
from torch import fx
from tvm import relax

from ...ir.printer import target_name
from ...ir.rewrite import constant
from . import gemm_lowering
from .ops import CONVERTERS, tvm_dtype
from .var_names import var_name


class LoweringError(NotImplementedError):
    """An op of the integer graph has no TVM lowering yet."""


def _shape(node: fx.Node) -> list:
    return list(node.meta["val"].shape)


def _const(t: torch.Tensor) -> relax.Expr:
    return relax.const(t.detach().contiguous().numpy(), tvm_dtype(t.dtype))


class _FloatIslands:
    """Float ops between dequantize and quantize, lowered by TVM's own PyTorch importer (one shared
    env/BlockBuilder), so every ATen op TVM understands can stay float inside an integer model."""

    def __init__(self):
        from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

        self.importer = ExportedProgramImporter()

    def supports(self, node: fx.Node) -> bool:
        return node.target is operator.getitem or getattr(node.target, "__name__", None) in self.importer.convert_map

    def emit(self, bb: relax.BlockBuilder, node: fx.Node, env: dict) -> relax.Expr:
        adapt = _ADAPTERS.get(node.target)
        self.importer.block_builder = bb
        self.importer.env = adapt(bb, node, env) if adapt else env
        return self.importer.convert_map[node.target.__name__](node)


def _additive_attention_mask(bb: relax.BlockBuilder, node: fx.Node, env: dict) -> dict:
    """TVM's attention takes only float masks: a boolean mask (True = attend) becomes 0 / -inf."""
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if mask is None or mask.meta["val"].dtype != torch.bool:
        return env
    zero, neg = relax.const(0.0, "float32"), relax.const(float("-inf"), "float32")
    keep = bb.emit(relax.op.astype(env[mask], "bool"))  # some producers hand it over as integers
    return {**env, mask: bb.emit(relax.op.where(keep, zero, neg))}


_ADAPTERS = {torch.ops.aten.scaled_dot_product_attention.default: _additive_attention_mask}


def unsupported_ops(gm: fx.GraphModule, floats: _FloatIslands) -> list[str]:
    return sorted({
        target_name(n) for n in gm.graph.nodes
        if n.op == "call_function" and n.target not in CONVERTERS and not floats.supports(n)
    })


def to_relax(gm: fx.GraphModule, target=None):
    """A Relax IRModule with one function `main(*inputs) -> tuple(outputs)`.

    With an x86 `target`, accumulate -> requantize pairs that the hand-written GEMM kernel handles
    (linear, pointwise conv) are lowered to it; everything else to TE definitions."""
    floats = _FloatIslands()
    missing = unsupported_ops(gm, floats)
    if missing:
        raise LoweringError(f"the TVM backend cannot lower {', '.join(missing)} yet")
    bb = relax.BlockBuilder()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    params = []
    for p in placeholders:
        shape = _shape(p)
        params.append(relax.Var(p.name, relax.TensorType(shape, tvm_dtype(p.meta["val"].dtype))))
    env: dict[fx.Node, relax.Expr] = dict(zip(placeholders, params))
    gemms = gemm_lowering.plan(gm) if target is not None else {}
    absorbed = set(gemms.values())
    with bb.function("main", params):
        with bb.dataflow():
            for node in gm.graph.nodes:
                if node.op == "get_attr":
                    env[node] = _const(constant(gm, node))
                elif node in absorbed:
                    continue  # emitted together with its requantize
                elif node in gemms:
                    env[node] = gemm_lowering.emit(bb, gm, node, gemms[node], env, target)
                elif node.op == "call_function" and node.target in CONVERTERS:
                    env[node] = _emit(bb, node, env)
                elif node.op == "call_function":
                    env[node] = floats.emit(bb, node, env)
                elif node.op == "output":
                    outs = [env[a] for a in node.args[0]]
                    result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()


def _emit(bb: relax.BlockBuilder, node: fx.Node, env: dict) -> relax.Expr:
    """emit_te the node's converter: tensor arguments (also inside lists) go through emit_te as
    TE tensors, everything else (ints, lists of ints, dtypes) is passed to the converter as is."""
    tensors = [env[n] for n in node.all_input_nodes]
    fn = CONVERTERS[node.target]

    def build(*te_tensors):
        lookup = dict(zip(node.all_input_nodes, te_tensors))
        args = fx.node.map_arg(node.args, lambda n: lookup[n])
        return fn(node, *args)

    return bb.emit_te(build, *tensors, primfunc_name_hint=node.name, name_hint=var_name(node))
