"""Lower `linear_int` / ungrouped `conv2d_int` (followed by `requantize_fixed`, or alone) to the hand-written
x86 GEMM kernel (gemm_kernel.py) with weights packed at compile time; with the requantize, the int32
accumulator never reaches memory.

A convolution is a GEMM over output pixels: a pointwise one reads its channels-last input (layout.py)
as the row-major [pixels, channels] matrix it already is; any other ungrouped one (the stem, ResNet's 3x3)
first gathers each pixel's receptive field into a row (im2col, padded with the input zero point, which the
folded bias cancels), whose (ky, kx, channel) order matches the weights reordered at build time. The
output rows are the channels-last result.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import fx
from tvm import relax, te
from tvm import tirx as tir

from ....ir import meta
from ....ir.rewrite import constant
from ..layout import Layouts
from ..ops import size_product
from ..ops_nhwc import conv_output_hw
from ..var_names import var_name
from .gemm_kernel import (
    INT8_WEIGHTS,
    Requant,
    WeightFormat,
    gemm_prim_func,
    pad_channels,
    weight_format,
)
from .isa import Isa, isa_for
from .tiling import Tiling, choose_tiling

qc = torch.ops.qcompile


@dataclass(frozen=True)
class GemmShape:
    """What one GEMM kernel's register tile is chosen for; m is None where the rows are free at run time."""

    isa: Isa
    m: int | None
    n: int
    k: int
    requant: Requant | None  # None: the kernel returns the int32 accumulator
    weights: WeightFormat = INT8_WEIGHTS  # how the kernel holds the weights (by their storage bits)


def default_tiling(shape: GemmShape) -> Tiling:
    """The cost model's tile (for free M: for any M)."""
    return choose_tiling(shape.isa, shape.m, shape.n, shape.k)


ChooseTiling = Callable[[GemmShape], Tiling]


def _args(node: fx.Node, *names):
    return dict(zip(names, node.args))


def _is_pointwise(conv: fx.Node) -> bool:
    a = _args(conv, "x", "w", "bias", "x_zp", "folded", "stride", "padding", "dilation", "groups")
    kh, kw = a["w"].meta["val"].shape[2:]
    return (kh, kw) == (1, 1) and list(a["stride"]) == [1, 1] and list(a["padding"]) == [0, 0]


_HEADS = {qc.linear_int.default: lambda n: True, qc.conv2d_int.default: lambda n: n.args[8] == 1}


def _gemm_ready(gm: fx.GraphModule, acc) -> bool:
    return (
        isinstance(acc, fx.Node) and acc.target in _HEADS and _HEADS[acc.target](acc)
        and acc.args[1].op == "get_attr"
        and (acc.args[3] == 0 or acc.args[4])  # input zero point folded into the bias (or zero)
    )


def plan(gm: fx.GraphModule, target) -> dict[fx.Node, fx.Node]:
    """result node -> its accumulator node, for every accumulator the GEMM kernel takes over on `target`
    (none where its ISA has no GEMM kernel): a requantize with its accumulator (requantized on the
    register tile), or an accumulator alone (int32 out, e.g. the classifier before its float dequantize)."""
    if target is None or isa_for(target) is None:
        return {}
    return accumulators_taken(gm, lambda acc: _gemm_ready(gm, acc))


def accumulators_taken(gm: fx.GraphModule, takes, requant_ok=lambda rq: True) -> dict[fx.Node, fx.Node]:
    """result -> accumulator for every accumulator `takes` accepts: with its requantize when that is its
    only user, has one shift and passes the kernel's own `requant_ok` (the kernel requantizes on the
    register tile), else alone (int32 out)."""
    pairs = {}
    for rq in gm.graph.nodes:
        if rq.target != qc.requantize_fixed.default:
            continue
        acc, x_zp, _, shift = rq.args[:4]
        if (takes(acc) and len(acc.users) == 1 and x_zp == 0 and constant(gm, shift).numel() == 1
                and requant_ok(rq)):
            pairs[rq] = acc
    absorbed = set(pairs.values())
    alone = {n: n for n in gm.graph.nodes if n not in absorbed and takes(n)}
    return {**pairs, **alone}


def _conv_out_hw(conv: fx.Node, h, w):
    _, _, _, _, _, stride, padding, dilation, _ = conv.args
    return conv_output_hw(h, w, conv.args[1].meta["val"].shape[2:], stride, padding, dilation)


def _im2col(x: te.Tensor, conv: fx.Node) -> te.Tensor:
    """[pixels, kh * kw * cin] rows of an NHWC input; outside the image every tap reads the zero point."""
    _, _, _, x_zp, _, stride, padding, dilation, _ = conv.args
    kh, kw = conv.args[1].meta["val"].shape[2:]
    n, h, w, c = x.shape
    oh, ow = _conv_out_hw(conv, h, w)

    def body(r, k):
        b, y, xx = r // (oh * ow), r % (oh * ow) // ow, r % ow
        ky, kx, ci = k // (kw * c), k % (kw * c) // c, k % c
        iy, ix = y * stride[0] + ky * dilation[0] - padding[0], xx * stride[1] + kx * dilation[1] - padding[1]
        inside = tir.all(iy >= 0, iy < h, ix >= 0, ix < w)
        return tir.if_then_else(inside, x[b, iy, ix, ci], tir.const(x_zp, str(x.dtype)))

    return te.compute((n * oh * ow, kh * kw * c), body, name="im2col")


def _rows(bb: relax.BlockBuilder, acc: fx.Node, layouts: Layouts) -> tuple[relax.Expr, list]:
    """The GEMM's left operand (one row per output element of a linear, per output pixel of a conv) and
    the result's shape without its channel dim; sizes are symbolic where the module has free dims."""
    x_n = acc.args[0]
    if acc.target == qc.linear_int.default:
        x = layouts.get(x_n, False)
        *outer, k = x.ty.shape.values
        return bb.emit(relax.op.reshape(x, (size_product(outer), k)), var_name(acc)), outer
    x = layouts.get(x_n, True)
    b, h, w, c = x.ty.shape.values
    if _is_pointwise(acc):
        return bb.emit(relax.op.reshape(x, (size_product([b, h, w]), c)), var_name(acc)), [b, h, w]
    oh, ow = _conv_out_hw(acc, h, w)
    cols = bb.emit_te(lambda t: _im2col(t, acc), x, primfunc_name_hint=f"im2col_{acc.name}", name_hint=var_name(acc))
    return cols, [b, size_product([oh]), size_product([ow])]


def _weight_matrix(gm: fx.GraphModule, acc: fx.Node) -> np.ndarray:
    """int8 [N, K] with K in the order of the rows' columns (for a conv: ky, kx, input channel)."""
    w = constant(gm, acc.args[1]).detach()
    if w.ndim == 4:
        w = w.permute(0, 2, 3, 1)
    return w.reshape(w.shape[0], -1).numpy()


def requant_of(gm: fx.GraphModule, rq: fx.Node | None, n: int) -> tuple[Requant | None, torch.Tensor]:
    """A requantize node's parameters for a hand-written epilogue over n channels (None: int32 out)."""
    if rq is None:
        return None, torch.zeros(n, dtype=torch.int32)
    _, _, mult_n, shift_n, _axis, out_zp, qmin, qmax, dtype = rq.args
    out_dtype = str(dtype).replace("torch.", "")
    mult = constant(gm, mult_n).to(torch.int32).expand(n)  # per-channel, or one value for all channels
    return Requant(int(constant(gm, shift_n)), out_zp, qmin, qmax, out_dtype), mult


def _offset_bias(bias: np.ndarray, w2: np.ndarray, isa) -> np.ndarray:
    """The bias plus what the kernel's offset A reads take away: isa.a_offset * sum_k w[n, k]."""
    if not isa.a_offset:
        return bias
    total = bias.astype(np.int64) + isa.a_offset * w2.astype(np.int64).sum(axis=1)
    if np.abs(total).max(initial=0) >= 2**31:
        raise ValueError("bias + a_offset * sum(w) leaves int32")
    return total.astype(np.int32)


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, acc: fx.Node, layouts: Layouts, target,
         choose_tiling: ChooseTiling = default_tiling) -> relax.Expr:
    """The GEMM computing `result`: `acc` requantized when result is its requantize, else `acc` itself."""
    w2 = _weight_matrix(gm, acc)
    n, k = w2.shape
    isa = isa_for(target)
    rows, outer = _rows(bb, acc, layouts)
    m = rows.ty.shape.values[0]
    requant, mult = requant_of(gm, result if result is not acc else None, n)
    bias = constant(gm, acc.args[2]).numpy() if acc.args[2] is not None else np.zeros(n, np.int32)
    bias = _offset_bias(bias, w2, isa)
    weights = weight_format(meta.storage_bits(acc.args[1]), isa)
    tiling = choose_tiling(GemmShape(isa, int(m) if isinstance(m, tir.IntImm) else None, n, k, requant, weights))
    padded = -(-n // tiling.nr) * tiling.nr
    name = f"gemm_{acc.name}"
    func = gemm_prim_func(n, k, requant, isa, tiling, weights, int(m) if isinstance(m, tir.IntImm) else None)
    func = func.with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name)
    gv = bb.add_func(func, name)
    consts = [
        relax.const(weights.pack(w2, isa, tiling.nr), "int32"),
        relax.const(pad_channels(bias, padded), "int32"),
        relax.const(pad_channels(mult.numpy(), padded), "int32"),
    ]
    out_dtype = requant.out_dtype if requant else "int32"
    out = bb.emit(relax.call_tir(gv, [rows, *consts], relax.TensorType((m, n), out_dtype)), var_name(result))
    if acc.target == qc.conv2d_int.default:
        layouts.channels_last.add(result)
    return bb.emit(relax.op.reshape(out, (*outer, n)), var_name(result))
