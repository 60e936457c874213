"""Lower qcompile's integer fx graph to a Relax module whose ops are TE-defined TIR functions.

Target-neutral: a target's pipeline (cpu/pipeline.py, cuda/pipeline.py) passes the hand-written kernels
its ISA has as `KernelLowering`s; this module imports no target."""
from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Callable

import sympy
import torch
import tvm
import tvm_ffi
from torch import fx
from torch.utils._sympy.functions import FloorDiv
from tvm import relax, tirx

from ...ir import meta
from ...ir.printer import target_name
from ...ir.rewrite import constant
from . import attention_lowering, ops_nhwc
from .layout import FOLLOWERS, Layouts, nhwc_axis
from .ops import CONVERTERS, PRIMFUNC_ATTRS, SCALAR_CONSTANTS, tvm_dtype
from .var_names import var_name


class LoweringError(NotImplementedError):
    """An op of the integer graph has no TVM lowering yet."""


# sympy node type -> how its (translated) arguments combine: what torch.export writes for sizes derived
# from its symbols (`2*s0`, `s0 + 1`, `s0 // 2`).
_SYMPY_OPS = {sympy.Add: operator.add, sympy.Mul: operator.mul, FloorDiv: tirx.floordiv}


class _Symbols:
    """torch.export's shape symbols as int64 TIR variables, one per symbol, so that Relax shape inference
    carries the free dimensions from the inputs through every op."""

    def __init__(self):
        self.vars: dict[str, tirx.Var] = {}
        self.ranges: dict[str, tuple[int, int | None]] = {}
        self.analyzer = tvm.sym.Analyzer()

    def shape(self, placeholder: fx.Node) -> list:
        dims = meta.input_dims(placeholder)
        if dims is None:  # a graph that did not come through capture: the example's shape
            return list(placeholder.meta["val"].shape)
        return [d if isinstance(d, int) else self._free(d) for d in dims]

    def _free(self, d: meta.FreeDim):
        size = self._prim(d.expr)
        if d.expr.is_Symbol:
            self.ranges[str(d.expr)] = (d.min, d.max)
            hi = d.max if d.max is not None else tvm.sym.ConstIntBound.POS_INF
            self.analyzer.update(size, tvm.sym.ConstIntBound(d.min, hi), override=True)
        return size

    def _prim(self, expr):
        if expr.is_Integer:
            return tirx.IntImm("int64", int(expr))
        if expr.is_Symbol:
            return self.vars.setdefault(str(expr), tirx.Var(str(expr), "int64"))
        combine = _SYMPY_OPS.get(type(expr))
        if combine is None:
            raise LoweringError(f"the TVM backend cannot express the dynamic size {expr} "
                                "(sums, products and floor divisions of the export's symbols only)")
        return functools.reduce(combine, [self._prim(a) for a in expr.args])

    def bounds(self) -> dict:
        """Function attributes with the declared ranges: Relax plans memory for the largest sizes."""
        attrs = {}
        if self.ranges:
            attrs["tir_var_lower_bound"] = {name: lo for name, (lo, _) in self.ranges.items()}
        upper = {name: hi for name, (_, hi) in self.ranges.items() if hi is not None}
        if upper:
            attrs["tir_var_upper_bound"] = upper
        return attrs

    def tighten(self, bb: relax.BlockBuilder, value):
        """The value with its shape simplified under the declared ranges. TVM's importer gives a slice
        up to s27 of a 512-long buffer the length min(s27, 512); torch.export proved s27 <= 512 (it is
        in the ranges), and without that Relax cannot broadcast the slice against s27-long tensors."""
        ty = getattr(value, "ty", None)
        if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
            return value
        dims = [self.analyzer.simplify(d) for d in ty.shape.values]
        if tvm_ffi.structural_equal(dims, list(ty.shape.values)):
            return value
        # A reshape (a free view), not a match_cast: Relax would read the match_cast as a definition of
        # s27 in terms of itself, and CanonicalizeTIRVariables recurses forever.
        return bb.emit(relax.op.reshape(value, relax.ShapeExpr(dims)))


def _const(t: torch.Tensor) -> relax.Expr:
    return relax.const(t.detach().contiguous().numpy(), tvm_dtype(t.dtype))


class _FloatIslands:
    """Float ops between dequantize and quantize, lowered by TVM's own PyTorch importer (one shared
    env/BlockBuilder), so every ATen op TVM understands can stay float inside an integer model; attention
    by attention_lowering.py."""

    def __init__(self):
        from tvm.relax.frontend.torch.exported_program_translator import (
            ExportedProgramImporter,
        )

        self.importer = ExportedProgramImporter()

    def supports(self, node: fx.Node) -> bool:
        return (node.target is operator.getitem or node.target in attention_lowering.CONVERTERS
                or getattr(node.target, "__name__", None) in self.importer.convert_map)

    def emit(self, bb: relax.BlockBuilder, node: fx.Node, env: dict) -> relax.Expr:
        own = attention_lowering.CONVERTERS.get(node.target)
        if own is not None:
            return own(bb, node, env)
        self.importer.block_builder = bb
        self.importer.env = env
        return self.importer.convert_map[node.target.__name__](node)


def _sym_size(node: fx.Node, layouts: Layouts):
    """A size read off the tensor's Relax shape: a TIR expression of the module's shape variables, or a
    constant (TVM's importer would turn a static size into a tensor, which shape arguments reject)."""
    x, dim = node.args
    return layouts.env[x].ty.shape[nhwc_axis(dim) if layouts.is_nhwc(x) else dim]


_SIZES = {torch.ops.aten.sym_size.int: _sym_size}


@dataclass(frozen=True)
class KernelLowering:
    """A hand-written kernel that takes accumulators (with their requantize) over from the TE definitions.

    plan(gm, target) -> {result node: accumulator node} for the nodes it takes (empty where the target's
    ISA has no such kernel); emit(bb, gm, result, acc, layouts, target) -> the Relax value of `result`.
    The lowerings one target passes claim disjoint nodes."""

    plan: Callable[[fx.GraphModule, object], dict[fx.Node, fx.Node]]
    emit: Callable[..., relax.Expr]


def unsupported_ops(gm: fx.GraphModule, floats: _FloatIslands) -> list[str]:
    return sorted({
        target_name(n) for n in gm.graph.nodes
        if n.op == "call_function" and n.target not in CONVERTERS and n.target not in ops_nhwc.NHWC_OPS
        and not floats.supports(n)
    })


def to_relax(gm: fx.GraphModule, target=None, lowerings: tuple[KernelLowering, ...] = ()):
    """A Relax IRModule with one function `main(*inputs) -> tuple(outputs)`.

    Convolutions and pools run channels-last (layout.py). Accumulate -> requantize pairs that one of the
    target's hand-written `lowerings` plans for (on CPUs the GEMM of linears and ungrouped convs, the
    depthwise conv, the activation matmul; on CUDA their tensor-core forms and the weight-only GEMV) are
    lowered to it; everything else to TE definitions; float ops through TVM's PyTorch importer (attention
    through attention_lowering.py)."""
    floats = _FloatIslands()
    missing = unsupported_ops(gm, floats)
    if missing:
        raise LoweringError(f"the TVM backend cannot lower {', '.join(missing)} yet")
    bb = relax.BlockBuilder()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    symbols = _Symbols()
    params = [
        relax.Var(p.name, relax.TensorType(symbols.shape(p), tvm_dtype(p.meta["val"].dtype))) for p in placeholders
    ]
    env: dict[fx.Node, relax.Expr] = dict(zip(placeholders, params))
    layouts = Layouts(bb, env)
    kernels = {result: (lowering, acc) for lowering in lowerings for result, acc in lowering.plan(gm, target).items()}
    absorbed = {acc for result, (_, acc) in kernels.items() if result is not acc}
    consts: dict[str, relax.Expr] = {}
    with bb.function("main", params, attrs=symbols.bounds()):
        with bb.dataflow():
            for node in gm.graph.nodes:
                if node.op == "get_attr":  # one Relax constant per tensor, however many nodes read it
                    env[node] = consts.setdefault(node.target, _const(constant(gm, node)))
                elif node in absorbed:
                    continue  # emitted together with its requantize
                elif node in kernels:
                    lowering, acc = kernels[node]
                    env[node] = lowering.emit(bb, gm, node, acc, layouts, target)
                elif node.target in _SIZES:
                    env[node] = _SIZES[node.target](node, layouts)
                elif node.op == "call_function" and node.target in ops_nhwc.NHWC_OPS:
                    env[node] = ops_nhwc.emit(bb, gm, node, layouts)
                elif node.op == "call_function" and node.target in CONVERTERS:
                    env[node] = _emit(bb, gm, node, layouts)
                elif node.op == "call_function":
                    env[node] = symbols.tighten(bb, floats.emit(bb, node, layouts.nchw_view()))
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
    TE tensors, symbolic sizes as TIR expressions (also through emit_te, which renames the shape
    variables inside the kernel), everything else (ints, lists of ints, dtypes) as is.
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

    attrs = {"primfunc_attrs": PRIMFUNC_ATTRS[node.target]} if node.target in PRIMFUNC_ATTRS else {}
    out = bb.emit_te(build, *tensors, primfunc_name_hint=node.name, name_hint=var_name(node), **attrs)
    if nhwc:
        layouts.channels_last.add(node)
    return out
