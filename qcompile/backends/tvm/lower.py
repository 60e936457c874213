"""Lower qcompile's integer fx graph to a Relax module whose ops are TE-defined TIR functions."""
from __future__ import annotations

import operator
from collections import ChainMap

import torch
from torch import fx
from tvm import relax

from ...ir.printer import target_name
from ...ir.rewrite import constant
from . import gemm_lowering, ops_nhwc
from .layout import FOLLOWERS, Layouts
from .ops import CONVERTERS, SCALAR_CONSTANTS, tvm_dtype


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


def _additive_attention_mask(bb: relax.BlockBuilder, node: fx.Node, env):
    """TVM's attention takes only float masks: a boolean mask (True = attend) becomes 0 / -inf."""
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if mask is None or mask.meta["val"].dtype != torch.bool:
        return env
    zero, neg = relax.const(0.0, "float32"), relax.const(float("-inf"), "float32")
    keep = bb.emit(relax.op.astype(env[mask], "bool"))  # some producers hand it over as integers
    return ChainMap({mask: bb.emit(relax.op.where(keep, zero, neg))}, env)


_ADAPTERS = {torch.ops.aten.scaled_dot_product_attention.default: _additive_attention_mask}


def unsupported_ops(gm: fx.GraphModule, floats: _FloatIslands) -> list[str]:
    return sorted({
        target_name(n) for n in gm.graph.nodes
        if n.op == "call_function" and n.target not in CONVERTERS and n.target not in ops_nhwc.NHWC_OPS
        and not floats.supports(n)
    })


def to_relax(gm: fx.GraphModule, target=None):
    """A Relax IRModule with one function `main(*inputs) -> tuple(outputs)`.

    Convolutions and pools run channels-last (layout.py). With an x86 `target`, accumulate -> requantize
    pairs that the hand-written GEMM kernel handles (linear, pointwise conv) are lowered to it; everything
    else to TE definitions."""
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
    layouts = Layouts(bb, env)
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
                    env[node] = gemm_lowering.emit(bb, gm, node, gemms[node], layouts, target)
                elif node.op == "call_function" and node.target in ops_nhwc.NHWC_OPS:
                    env[node] = ops_nhwc.emit(bb, gm, node, layouts)
                elif node.op == "call_function" and node.target in CONVERTERS:
                    env[node] = _emit(bb, gm, node, layouts)
                elif node.op == "call_function":
                    env[node] = floats.emit(bb, node, layouts.nchw_view())
                elif node.op == "output":
                    outs = [layouts.get(a, False) for a in node.args[0]]
                    result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()


def _scalars_inlined(gm: fx.GraphModule, node: fx.Node) -> tuple:
    """node.args with the one-element constants its converter wants as Python ints replaced by their value."""
    args = list(node.args)
    for i in SCALAR_CONSTANTS.get(node.target, ()):
        if isinstance(args[i], fx.Node) and args[i].op == "get_attr" and constant(gm, args[i]).numel() == 1:
            args[i] = int(constant(gm, args[i]))
    return tuple(args)


def _input_nodes(args) -> list[fx.Node]:
    nodes: list[fx.Node] = []
    fx.node.map_arg(args, nodes.append)
    return list(dict.fromkeys(nodes))


def _emit(bb: relax.BlockBuilder, gm: fx.GraphModule, node: fx.Node, layouts: Layouts) -> relax.Expr:
    """emit_te the node's converter: tensor arguments (also inside lists) go through emit_te as
    TE tensors, everything else (ints, lists of ints, dtypes) is passed to the converter as is.
    An element-wise op whose input is channels-last runs channels-last; any other op reads NCHW."""
    nhwc = layouts.follows_nhwc(node)
    activations = layouts.activation_nodes(node) if nhwc else set()
    args = _scalars_inlined(gm, node)
    inputs = _input_nodes(args)
    tensors = [layouts.get(n, n in activations) for n in inputs]
    args = FOLLOWERS[node.target].in_layout(args) if nhwc else args
    fn = CONVERTERS[node.target]

    def build(*te_tensors):
        lookup = dict(zip(inputs, te_tensors))
        return fn(node, *fx.node.map_arg(args, lambda n: lookup[n]))

    out = bb.emit_te(build, *tensors, primfunc_name_hint=node.name)
    if nhwc:
        layouts.channels_last.add(node)
    return out
