"""Exact depthwise int8 convolution with the window reduced by a 4-way dot product (aarch64 `sdot`), with a
fused requantize epilogue: a hand-written TVM TIR kernel, the depthwise sibling of gemm_kernel.py.

Semantics, bit-exact with `qcompile.quant.ops.conv2d_int` (groups == channels, one output channel per
input channel) followed by `requantize_fixed` with one shift for all channels:

    acc[b, y, x, c] = sum_t int32(X[b, y*s + ky_t*d - p, x*s + kx_t*d - p, c] - sub) * W[c, t] + bias[c]
    out[b, y, x, c] = clamp(((acc * mult[c] + 2^(shift-1)) >> shift) + out_zp, qmin, qmax)

over the window taps t = (ky, kx), where the padding reads X's zero point (sub is that zero point, or 0
when the lowering already folded it into the bias).

Why a dot product fits a depthwise conv. A depthwise conv has no reduction over channels, only over the
kh * kw window taps of each channel. `sdot` sums 4 int8 x int8 products into each int32 lane, so lane i
of one sdot takes 4 taps of channel i: a 16-byte vector holds 4 channels x 4 taps, and a 3x3 window is 3
sdots per 4 channels (9 taps padded to 12 with zero weights). The NEON path without it widens to int16,
multiplies and widens again (`smull`/`mul` + `sxtl` + `add`): about four times the instructions per MAC.

Layout work. NHWC activations hold 16 channels of one tap contiguously; sdot wants the 4 taps of a channel
together. For each group of 4 taps the kernel loads the 4 taps' 16 channels (4 vector loads) and
transposes the 4x16 bytes with two rounds of zips (8 `zip1`/`zip2`) into 4 vectors of 4 channels x 4 taps.
The weights are packed in that order once, at lowering time: [channel block, tap group, 4 x 16 bytes].

Signedness. `sdot` multiplies signed bytes; the activations are uint8. A pre-pass copies the input once
into a zero-point padded int8 buffer holding a - 128 (a ^ 0x80, the GEMM kernel's flip), with the channels
padded to a multiple of 16: the hot loop then has no border tests and no flips, and each input byte is
flipped once instead of once per tap that reads it. The lowering adds (128 - sub) * sum_t W[c, t] to the
bias (sub as above), so the accumulator is the exact one. The int32 accumulator cannot overflow: |acc| <=
kh * kw * 128 * 128 + |bias|.

Loop structure. Jobs (batch x output row x block of 16 channels) run in parallel; within a job the output
pixels of the row run in turn, each keeping its 4 accumulator vectors in registers over the whole window,
and the block's weight vectors are loop-invariant (LLVM keeps a 3x3 window's 12 in registers). The
requantize epilogue (gemm_kernel.requantize_lanes) runs on the accumulators right after the window.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
from tvm.script import tirx as T

from .gemm_kernel import Requant, requantize_lanes
from .isa import NEON_DOTPROD, NEON_I8MM, Isa, sdot
from .parallelism import is_small, static_loop

__all__ = ["DepthwiseConv", "DepthwiseIsa", "ISAS", "for_isa", "depthwise_prim_func", "pack_weight", "offset_bias"]

CHANNELS = 16  # channels per block: one 16-byte vector of one tap
LANES = 4  # channels per dot-product vector (int32 lanes)
TAPS = 4  # taps per dot-product lane (bytes summed into one int32)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class DepthwiseConv:
    """The static shape of one depthwise conv (the batch and the image size are free at run time)."""

    channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    x_zp: int  # what the padding holds (the input's zero point)

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    @property
    def tap_groups(self) -> int:
        return _ceil_div(self.taps, TAPS)

    @property
    def blocks(self) -> int:
        return _ceil_div(self.channels, CHANNELS)


@dataclass(frozen=True)
class DepthwiseIsa:
    """What a target needs for this kernel: its 4-way dot product and the offset its activations take."""

    isa: Isa
    dot: Callable  # (acc int32x4, activations int8x16, weights int8x16) -> int32x4
    a_offset: int  # the kernel reads a - a_offset (uint8 activations flipped to int8)


# Isa name -> the depthwise kernel for it. Targets whose ISA is missing here (x86, the A55 without dot
# product) keep the generic TE conv (ops_nhwc.conv2d_nhwc) and its schedule.
# An i8mm target (GEMMs on smmla) has the dot product too: its depthwise convs run on the same sdot kernel.
_SDOT = DepthwiseIsa(NEON_DOTPROD, sdot, a_offset=128)
ISAS: dict[str, DepthwiseIsa] = {NEON_DOTPROD.name: _SDOT, NEON_I8MM.name: _SDOT}


def for_isa(isa: Isa | None) -> DepthwiseIsa | None:
    return ISAS.get(isa.name) if isa is not None else None


# ---------------------------------------------------------------- packing (lowering time, numpy)
def pack_weight(w: np.ndarray, conv: DepthwiseConv) -> np.ndarray:
    """int8 [C, 1, kh, kw] -> int8 [blocks, tap groups, 4 * 16], zero padded (channels and taps).

    Byte q * 16 + 4 * i + j of (block b, group g) is W[16 b + 4 q + i, tap 4 g + j] (taps row-major over
    the window): vector q is the weight operand of the sdot for channels 16 b + 4 q .. + 3, in the order
    `_transposed` gives the activations."""
    w = np.asarray(w)
    if w.dtype != np.int8 or w.shape != (conv.channels, 1, *conv.kernel):
        raise TypeError(f"depthwise weight must be int8 [{conv.channels}, 1, {conv.kernel[0]}, {conv.kernel[1]}], "
                        f"got {w.dtype} {w.shape}")
    padded = np.zeros((conv.blocks * CHANNELS, conv.tap_groups * TAPS), np.int8)
    padded[: conv.channels, : conv.taps] = w.reshape(conv.channels, conv.taps)
    # [block, q, i, group, j] -> [block, group, q, i, j]
    blocks = padded.reshape(conv.blocks, CHANNELS // LANES, LANES, conv.tap_groups, TAPS)
    return np.ascontiguousarray(blocks.transpose(0, 3, 1, 2, 4)).reshape(conv.blocks, conv.tap_groups, CHANNELS * TAPS)


def offset_bias(bias: np.ndarray, w: np.ndarray, offset: int) -> np.ndarray:
    """bias + offset * sum_t W[c, t]: what reading a - offset instead of a - sub takes away, given back
    (offset = a_offset - sub)."""
    total = np.asarray(bias).astype(np.int64) + offset * np.asarray(w).astype(np.int64).reshape(w.shape[0], -1).sum(axis=1)
    if np.abs(total).max(initial=0) >= 2**31:
        raise ValueError("the depthwise bias with its offset leaves int32")
    return total.astype(np.int32)


# ---------------------------------------------------------------- the window transposed for the dot product
def _zip(a, b, half: int, lanes: int, dtype: str):
    """Interleave the `half` (0: low, 1: high) halves of two `lanes`-element vectors (zip1 / zip2)."""
    base = half * lanes // 2
    vec = tvm.tirx.Shuffle([tvm.tirx.reinterpret(f"{dtype}x{lanes}", a), tvm.tirx.reinterpret(f"{dtype}x{lanes}", b)],
                           [i for k in range(lanes // 2) for i in (base + k, lanes + base + k)])
    return tvm.tirx.reinterpret("int8x16", vec)


def _transposed(rows: list) -> list:
    """4 vectors (taps 0..3) of 16 channels -> 4 vectors q of channels 4q..4q+3 x taps 0..3: byte 4i + j of
    vector q is rows[j][4q + i]. Bytes then halfwords are interleaved: 4 zip1/zip2 per round."""
    pairs = [[_zip(rows[0], rows[1], h, 16, "int8"), _zip(rows[2], rows[3], h, 16, "int8")] for h in (0, 1)]
    return [_zip(*pairs[q // 2], q % 2, 8, "int16") for q in range(LANES)]


def depthwise_prim_func(conv: DepthwiseConv, requant: Requant | None, dw: DepthwiseIsa,
                        sizes: tuple = ()) -> tvm.tirx.PrimFunc:
    """main(X: uint8 [N, H, W, C], Wp: int8 [blocks, groups, 64], bias: int32 [CP], mult: int32 [CP], Out)
    with N, H, W free. Out is `requant.out_dtype` [N, OH, OW, C] (OH, OW read off it), or the int32
    accumulator when `requant` is None (mult unused). bias (with the offset, see offset_bias) and mult are
    zero-padded to CP = blocks * 16; Wp is pack_weight's layout. `sizes`: (N, OH, OW) as the model calls it,
    so that the loops are built serial or parallel without a run-time branch where all are known
    (parallelism.py)."""
    C, (_, KW), (SH, SW), (PH, PW), (DH, DW) = conv.channels, conv.kernel, conv.stride, conv.padding, conv.dilation
    NB, NG, CP, NT = conv.blocks, conv.tap_groups, conv.blocks * CHANNELS, conv.taps
    pad = conv.x_zp - dw.a_offset  # the padding (x_zp) as the kernel reads it
    out_dtype = requant.out_dtype if requant else "int32"
    full_c = C % CHANNELS == 0  # no ragged last block, so the epilogue needs no channel guard
    flip = tvm.tirx.const(dw.a_offset, "uint8")
    dot = dw.dot
    loop = static_loop(*sizes, CP, NT) if sizes else None

    def group_vectors(Xp, b, y0, x0, c0, g) -> list:
        """The 4 dot-product operands of tap group g (an unrolled loop variable) at one output pixel."""
        # A padding tap (t >= NT) re-reads the last tap: any in-bounds byte will do, its weight is 0.
        taps = [T.min(g * TAPS + j, NT - 1) for j in range(TAPS)]
        rows = [Xp[b, y0 + t // KW * DH, x0 + t % KW * DW, T.ramp(c0, 1, CHANNELS)] for t in taps]
        return _transposed(rows)

    @T.macro
    def copy_flipped(X, Xp, N, H, W, loop):
        # One pass (parallel over padded rows): the hot loop then reads a - 128 with the padding in place.
        for row in loop(N * (H + 2 * PH)):
            b = T.meta_var(row // (H + 2 * PH))
            y = T.meta_var(row % (H + 2 * PH))
            if PH <= y and y < H + PH:
                for xx in range(PW):
                    for c in range(CP):
                        Xp[b, y, xx, c] = T.int8(pad)
                for xx in range(W):
                    for c in range(C):
                        Xp[b, y, xx + PW, c] = T.reinterpret("int8", X[b, y - PH, xx, c] ^ flip)
                    for c in range(C, CP):
                        Xp[b, y, xx + PW, c] = T.int8(pad)
                for xx in range(W + PW, W + 2 * PW):
                    for c in range(CP):
                        Xp[b, y, xx, c] = T.int8(pad)
            else:
                for xx in range(W + 2 * PW):
                    for c in range(CP):
                        Xp[b, y, xx, c] = T.int8(pad)

    @T.macro
    def store(acc, Out, mult, b, y, x, blk):
        if full_c or blk * CHANNELS + CHANNELS <= C:
            for q in T.unroll(LANES):
                if requant is not None:
                    Out[b, y, x, T.ramp(blk * CHANNELS + q * LANES, 1, LANES)] = requantize_lanes(
                        acc[T.ramp(q * LANES, 1, LANES)], mult[T.ramp(blk * CHANNELS + q * LANES, 1, LANES)], LANES, requant)
                else:
                    Out[b, y, x, T.ramp(blk * CHANNELS + q * LANES, 1, LANES)] = acc[T.ramp(q * LANES, 1, LANES)]
        else:  # ragged last block: scalar stores of the channels that exist
            for i in range(CHANNELS):
                if blk * CHANNELS + i < C:
                    if requant is not None:
                        Out[b, y, x, blk * CHANNELS + i] = requantize_lanes(acc[i], mult[blk * CHANNELS + i], 1, requant)
                    else:
                        Out[b, y, x, blk * CHANNELS + i] = acc[i]

    @T.macro
    def rows(Xp, Wp, bias, mult, Out, N, OH, OW, loop):
        # A job is one output row of one 16-channel block: its weights stay in registers along the row.
        for job in loop(N * OH * NB):
            blk = T.meta_var(job % NB)
            y = T.meta_var(job // NB % OH)
            b = T.meta_var(job // (NB * OH))
            for xo in range(OW):
                # Accumulators in vector registers: a small "global" buffer is a stack alloca LLVM
                # promotes (see tiling.py).
                acc = T.alloc_buffer((CHANNELS,), "int32")
                for q in T.unroll(LANES):
                    acc[T.ramp(q * LANES, 1, LANES)] = bias[T.ramp(blk * CHANNELS + q * LANES, 1, LANES)]
                for g in T.unroll(NG):
                    vs = T.meta_var(group_vectors(Xp, b, y * SH, xo * SW, blk * CHANNELS, g))
                    # One sdot per 4 channels; Python-level indices: the transposes are fixed shuffles.
                    acc[T.ramp(0, 1, LANES)] = dot(acc[T.ramp(0, 1, LANES)], vs[0], Wp[blk, g, T.ramp(0, 1, CHANNELS)])
                    acc[T.ramp(4, 1, LANES)] = dot(acc[T.ramp(4, 1, LANES)], vs[1], Wp[blk, g, T.ramp(16, 1, CHANNELS)])
                    acc[T.ramp(8, 1, LANES)] = dot(acc[T.ramp(8, 1, LANES)], vs[2], Wp[blk, g, T.ramp(32, 1, CHANNELS)])
                    acc[T.ramp(12, 1, LANES)] = dot(acc[T.ramp(12, 1, LANES)], vs[3], Wp[blk, g, T.ramp(48, 1, CHANNELS)])
                store(acc, Out, mult, b, y, xo, blk)

    @T.prim_func
    def depthwise(x: T.handle, Wp: T.Buffer((NB, NG, CHANNELS * TAPS), "int8"), bias: T.Buffer((CP,), "int32"),
                  mult: T.Buffer((CP,), "int32"), out: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        N, H, W, OH, OW = T.int32(), T.int32(), T.int32(), T.int32(), T.int32()
        X = T.match_buffer(x, (N, H, W, C), "uint8")
        Out = T.match_buffer(out, (N, OH, OW, C), out_dtype)
        Xp = T.alloc_buffer((N, H + 2 * PH, W + 2 * PW, CP), "int8")
        if loop is not None:
            copy_flipped(X, Xp, N, H, W, loop)
            rows(Xp, Wp, bias, mult, Out, N, OH, OW, loop)
        elif is_small(N, OH, OW, CP, NT):
            copy_flipped(X, Xp, N, H, W, T.serial)
            rows(Xp, Wp, bias, mult, Out, N, OH, OW, T.serial)
        else:
            copy_flipped(X, Xp, N, H, W, T.parallel)
            rows(Xp, Wp, bias, mult, Out, N, OH, OW, T.parallel)

    return depthwise
