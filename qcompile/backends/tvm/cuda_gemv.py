"""A hand-written CUDA GEMV kernel for weight-only quantized Linear layers of decode shape (a few rows of
activations against a large int4 or int8 weight): the weights are streamed from memory once.

Layout of the packed weights (`Codes.pack`): uint32 [N, K / V] with V = 32 / bits codes per word, row n's
words in K order. Each code is stored unsigned (u = code + 2^(bits-1)); within a word, code positions are
interleaved in pairs: position p holds k offset 2 * (p % (V/2)) + p // (V/2), so that positions t and
t + V/2, 16 bits apart, are the neighbours k = 2t, 2t + 1. One shift and one mask (`(word >> 4t) &
0x000F000F` for int4) put a pair into the low mantissa bits of two float16 lanes, where each reads as the
subnormal u * 2^-24, converted exactly to float32 by the half -> float conversion: no integer-to-float
instruction (quarter rate) and no magic-number subtraction per value. The 2^24 and the offset come back
once per chunk: sum x * code = 2^24 * sum x * (u * 2^-24) - 2^(bits-1) * sum x. Row strides are multiples
of 16 bytes.

Work split: a warp owns `rows` weight rows (split-K over its 32 lanes, reduced by warp shuffles at the
end); each lane reads 4 consecutive words per row per step (one 128-bit load; the warp reads 512
contiguous bytes of each row), i.e. a chunk of 4 * V values, which must lie within one scale group.
A block is `warps` warps; the grid is (row blocks, blocks of `m_block` activation rows). Activation rows
past M and weight rows past N are clamped in the loads (no branch in the K loop) and skipped when stored.

Numerics (decided here, the tests justify their tolerances from it): activations are converted to
float16 before the kernel (an `astype` that fuses into the producer's kernel; half the activation
bytes), scales are float16 (the weight's group scales rounded once at build time); the products of
float16 activations and integer codes are exact in float32 and accumulate in float32 (per chunk of 4V
values, then offset-corrected and times its group scale, then over chunks and lanes). So the result differs from the float32 reference
by the rounding of x and of the scales to float16 (relative 2^-11 each, random signs: about
sqrt(K) * 2^-11 * rms(x * w) in absolute terms) and by the summation order; no float16 accumulation
can overflow.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from .cuda_weight_codes import SUBNORMAL, WORDS_PER_LOAD, Codes

WARP = 32


@dataclass(frozen=True)
class GemvConfig:
    rows: int = 4     # weight rows per warp: each lane's activation chunk is reused for all of them
    warps: int = 4    # warps per block
    m_block: int = 1  # activation rows per block (grid.y covers M)
    unroll: int = 4   # K steps unrolled, so that rows * unroll 128-bit loads per lane are in flight


MAX_ROWS = 16  # largest static M the GEMV takes; above, the TE definition and the dlight schedules


def default_config(m: int | None, n: int, k: int) -> GemvConfig:
    """M = 1: 4 rows per warp, 4 warps; small batches keep up to 8 activation rows per block (their
    accumulators and activation chunks live in registers: more weight rows per warp spill at 8), a free
    M is served in blocks of 4 rows."""
    m_block = 4 if m is None else min(m, 8)
    return GemvConfig(rows={1: 4, 2: 2}.get(m_block, 1), m_block=m_block)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gemv_prim_func(n: int, k: int, group_size: int, codes: Codes, cfg: GemvConfig) -> tvm.tirx.PrimFunc:
    """main(x: float16 [M, k], w: uint32 [n, k / V], s: float16 [n, k / group_size], bias: float32 [n],
    y: float32 [M, n]) with M free: y = x @ (decode(w) * s).T + bias."""
    V, C = codes.per_word, codes.chunk
    if k % C or group_size % C:
        raise ValueError(f"K ({k}) and the group size ({group_size}) must be multiples of {C} for {codes.bits}-bit codes")
    R, W, MB, U = cfg.rows, cfg.warps, cfg.m_block, cfg.unroll
    KW, NG, CH = k // V, k // group_size, k // C  # words, groups and lane chunks per row
    steps = _ceil_div(CH, WARP)
    U = min(U, steps)
    outer = _ceil_div(steps, U)
    ragged_k = outer * U * WARP != CH  # the last step has lanes without a chunk
    ROWS = R * W
    half = V // 2
    mask, bits, offset = codes.pair_mask, codes.bits, float(codes.offset)

    @T.macro
    def step(X, w, s, acc, xl, xs, wl, q, part, M, bm, bn, warp, c):
        for mb in T.unroll(MB):
            # The row index is written out in each load, not bound to a variable: TVMScript would make a
            # variable assigned in an unrolled loop one local cell, and the CUDA codegen then prints the
            # loads of all rows as one expression and reuses the first row's load for every row.
            for v in T.unroll(C // 8):
                xl[mb, T.ramp(v * 8, 1, 8)] = T.Cast("float32x8", X[T.min(bm * MB + mb, M - 1), T.ramp(c * C + v * 8, 1, 8)])
            xs[mb] = T.float32(0)
            for i in T.unroll(C):
                xs[mb] = xs[mb] + xl[mb, i]
        for r in T.unroll(R):
            wl[r, T.ramp(0, 1, WORDS_PER_LOAD)] = w[T.min(bn * ROWS + r * W + warp, n - 1), T.ramp(c * WORDS_PER_LOAD, 1, WORDS_PER_LOAD)]
        for r in T.unroll(R):
            for j in T.unroll(WORDS_PER_LOAD):
                for t in T.unroll(half):
                    pair = T.bitwise_and(T.shift_right(wl[r, j], T.uint32(t * bits)), T.uint32(mask))
                    q[T.ramp(j * V + 2 * t, 1, 2)] = T.Cast("float32x2", T.reinterpret("float16x2", pair))
            scale = T.Cast("float32", s[T.min(bn * ROWS + r * W + warp, n - 1), c * C // group_size])
            for mb in T.unroll(MB):
                part[0] = T.float32(0)
                for i in T.unroll(C):
                    part[0] = part[0] + xl[mb, i] * q[i]
                acc[mb, r] = acc[mb, r] + (part[0] * T.float32(SUBNORMAL) - T.float32(offset) * xs[mb]) * scale

    @T.prim_func
    def gemv(x: T.handle, w: T.Buffer((n, KW), "uint32"), s: T.Buffer((n, NG), "float16"),
             bias: T.Buffer((n,), "float32"), y: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        M = T.int32()
        X = T.match_buffer(x, (M, k), "float16")
        Y = T.match_buffer(y, (M, n), "float32")
        for bm in T.thread_binding((M + MB - 1) // MB, thread="blockIdx.y"):
            for bn in T.thread_binding(_ceil_div(n, ROWS), thread="blockIdx.x"):
                for warp in T.thread_binding(W, thread="threadIdx.y"):
                    for lane in T.thread_binding(WARP, thread="threadIdx.x"):
                        acc = T.alloc_buffer((MB, R), "float32", scope="local")
                        xl = T.alloc_buffer((MB, C), "float32", scope="local")
                        xs = T.alloc_buffer((MB,), "float32", scope="local")  # sum of the chunk's activations
                        wl = T.alloc_buffer((R, WORDS_PER_LOAD), "uint32", scope="local")
                        q = T.alloc_buffer((C,), "float32", scope="local")
                        part = T.alloc_buffer((1,), "float32", scope="local")
                        for mb in T.unroll(MB):
                            for r in T.unroll(R):
                                acc[mb, r] = T.float32(0)
                        for o in range(outer):
                            for u in T.unroll(U):
                                if ragged_k:
                                    if (o * U + u) * WARP + lane < CH:
                                        step(X, w, s, acc, xl, xs, wl, q, part, M, bm, bn, warp, (o * U + u) * WARP + lane)
                                else:
                                    step(X, w, s, acc, xl, xs, wl, q, part, M, bm, bn, warp, (o * U + u) * WARP + lane)
                        # Split-K over the lanes: a shuffle tree leaves each row's sum in lane 0.
                        for mb in T.unroll(MB):
                            for r in T.unroll(R):
                                for d in T.unroll(5):
                                    acc[mb, r] = acc[mb, r] + T.tvm_warp_shuffle_down(
                                        T.tvm_warp_activemask(), acc[mb, r], 16 >> d, WARP, WARP)
                                if lane == 0 and bm * MB + mb < M and bn * ROWS + r * W + warp < n:
                                    Y[bm * MB + mb, bn * ROWS + r * W + warp] = acc[mb, r] + bias[bn * ROWS + r * W + warp]

    return gemv
