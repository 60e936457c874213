"""A hand-written CUDA GEMV kernel for weight-only quantized Linear layers of decode shape (a few rows of
activations against a large int4 or int8 weight): the weights are streamed from memory once.

Layout of the packed weights (`Codes.pack`): uint32 [N, K / V] with V = 32 / bits codes per word, row n's
words in K order. Each code is stored unsigned (u = code + 2^(bits-1)); within a word, code positions are
interleaved in pairs: position p holds k offset 2 * (p % (V/2)) + p // (V/2), so that positions t and
t + V/2, 16 bits apart, are the neighbours k = 2t, 2t + 1. A mask (`word & 0x000F000F` for int4) puts a
pair into the low mantissa bits of two float16 lanes, where each reads as the subnormal u * 2^-24,
converted exactly to float32 by the half -> float conversion: no integer-to-float instruction (quarter
rate) and no magic-number subtraction per value. The word is shifted by whole bytes only: an int4 pair at
bits 4..7 is read in place as 16u * 2^-24 (exact) and summed apart, so one shift serves a word's 4 pairs.
The 2^24 and the offset come back once per chunk: sum x * code = 2^24 * sum x * (u * 2^-24) - 2^(bits-1)
* sum x. Row strides are multiples of 16 bytes.

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

from .weight_codes import SUBNORMAL, WORDS_PER_LOAD, Codes

WARP = 32


@dataclass(frozen=True)
class GemvConfig:
    rows: int = 4     # weight rows per warp: each lane's activation chunk is reused for all of them
    warps: int = 4    # warps per block
    m_block: int = 1  # activation rows per block (grid.y covers M)
    unroll: int = 4   # K steps unrolled (rows * unroll 128-bit loads per lane written first; ptxas issues
    # only some early to save registers: 9 of 34 at 4096 x 4096, r2 w8 u4. mma_gemv_kernel.py copies async.)
    split_k: int = 1  # warps of a block sharing its rows, each over every split_k-th 512-byte K segment


MAX_ROWS = 16  # largest static M the GEMV takes; above, the float16 tensor-core GEMM (weight_only_lowering.py)


def default_config(m: int | None, n: int, k: int) -> GemvConfig:
    """M = 1 by the weight's shape, from the sweeps of bench/cuda/int4_gemv.py on the H200
    (bench/results/cuda/2026-11-26-h200-2 to -4): for wide weights (N >= 16384) 4 rows per warp and 8 warps;
    for long rows (K >= 16384) 8 rows per warp (each warp reuses its activation chunk for 8 rows) with 2
    warps splitting each row's K (twice the blocks); 2 rows per warp and 8 warps for small weights
    (4096 x 4096: short rows, latency-bound); else 4 rows and 4 warps. Small batches keep up to 8
    activation rows per block (their accumulators and activation chunks live in registers: more weight
    rows per warp spill at 8); a free M is served in blocks of 4 rows."""
    m_block = 4 if m is None else min(m, 8)
    if m_block > 1:
        return GemvConfig(rows=2 if m_block == 2 else 1, m_block=m_block)
    if n >= 16384:
        return GemvConfig(rows=4, warps=8, unroll=2)
    if k >= 16384:
        return GemvConfig(rows=8, warps=4, unroll=2, split_k=2)
    if n * k <= 1 << 24:
        return GemvConfig(rows=2, warps=8, unroll=4)
    return GemvConfig(rows=4, warps=4, unroll=4)


def fma(a, b, c):
    """a * b + c rounded once (CUDA's fmaf; TVM's CUDA codegen has no lowering of tirx.fma)."""
    return T.call_pure_extern("float32", "fmaf", a, b, c)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def gemv_prim_func(n: int, k: int, group_size: int, codes: Codes, cfg: GemvConfig) -> tvm.tirx.PrimFunc:
    """main(x: float16 [M, k], w: uint32 [n, k / V], s: float16 [n, k / group_size], bias: float32 [n],
    y: float32 [M, n]) with M free: y = x @ (decode(w) * s).T + bias."""
    V, C = codes.per_word, codes.chunk
    if k % C or group_size % C:
        raise ValueError(f"K ({k}) and the group size ({group_size}) must be multiples of {C} for {codes.bits}-bit codes")
    R, W, MB, U, S = cfg.rows, cfg.warps, cfg.m_block, cfg.unroll, cfg.split_k
    if W % S:
        raise ValueError(f"split_k ({S}) must divide the warps per block ({W})")
    KW, NG, CH = k // V, k // group_size, k // C  # words, groups and lane chunks per row
    G = W // S  # warp groups: each owns R rows; its S warps split their K
    steps = ceil_div(CH, WARP * S)
    U = min(U, steps)
    outer = ceil_div(steps, U)
    ragged_k = outer * U * WARP * S != CH  # the last step has lanes without a chunk
    ROWS = R * G
    half = V // 2
    mask, bits, offset = codes.pair_mask, codes.bits, float(codes.offset)

    @T.macro
    def step(X, w, s, acc, xl, xs, wl, q, part, M, bm, bn, g, c):
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
            wl[r, T.ramp(0, 1, WORDS_PER_LOAD)] = w[T.min(bn * ROWS + r * G + g, n - 1), T.ramp(c * WORDS_PER_LOAD, 1, WORDS_PER_LOAD)]
        for r in T.unroll(R):
            for j in T.unroll(WORDS_PER_LOAD):
                for t in T.unroll(half):
                    # Pair t sits at bit t * bits of each half. Shifted down by whole bytes only, a 4-bit
                    # pair at bits 4..7 is read in place as 16 times its value (still a subnormal, exact):
                    # one shift per word instead of three. Its products go to the 16x partial sum.
                    pair = T.bitwise_and(T.shift_right(wl[r, j], T.uint32(t * bits // 8 * 8)),
                                         T.shift_left(T.uint32(mask), T.uint32(t * bits % 8)))
                    q[T.ramp(j * V + 2 * t, 1, 2)] = T.Cast("float32x2", T.reinterpret("float16x2", pair))
            scale = T.Cast("float32", s[T.min(bn * ROWS + r * G + g, n - 1), c * C // group_size])
            for mb in T.unroll(MB):
                part[0] = T.float32(0)
                part[1] = T.float32(0)
                for i in T.unroll(C):
                    # Fused multiply-adds written out: the build compiles without contraction (nvcc_build).
                    part[i % V // 2 * bits % 8 // 4] = fma(xl[mb, i], q[i], part[i % V // 2 * bits % 8 // 4])
                sums = fma(part[1], T.float32(1 / 16), part[0])
                acc[mb, r] = fma(fma(sums, T.float32(SUBNORMAL), -T.float32(offset) * xs[mb]), scale, acc[mb, r])

    @T.prim_func
    def gemv(x: T.handle, w: T.Buffer((n, KW), "uint32"), s: T.Buffer((n, NG), "float16"),
             bias: T.Buffer((n,), "float32"), y: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        M = T.int32()
        X = T.match_buffer(x, (M, k), "float16")
        Y = T.match_buffer(y, (M, n), "float32")
        for bm in T.thread_binding((M + MB - 1) // MB, thread="blockIdx.y"):
            for bn in T.thread_binding(ceil_div(n, ROWS), thread="blockIdx.x"):
                for warp in T.thread_binding(W, thread="threadIdx.y"):
                    for lane in T.thread_binding(WARP, thread="threadIdx.x"):
                        acc = T.alloc_buffer((MB, R), "float32", scope="local")
                        xl = T.alloc_buffer((MB, C), "float32", scope="local")
                        xs = T.alloc_buffer((MB,), "float32", scope="local")  # sum of the chunk's activations
                        wl = T.alloc_buffer((R, WORDS_PER_LOAD), "uint32", scope="local")
                        q = T.alloc_buffer((C,), "float32", scope="local")
                        part = T.alloc_buffer((2,), "float32", scope="local")  # products of codes read as 1x, 16x
                        partial = T.alloc_buffer((W, MB, R), "float32", scope="shared")  # split-K: each warp's sums
                        for mb in T.unroll(MB):
                            for r in T.unroll(R):
                                acc[mb, r] = T.float32(0)
                        for o in range(outer):
                            for u in T.unroll(U):
                                if ragged_k:
                                    if ((o * U + u) * S + warp % S) * WARP + lane < CH:
                                        step(X, w, s, acc, xl, xs, wl, q, part, M, bm, bn, warp // S, ((o * U + u) * S + warp % S) * WARP + lane)
                                else:
                                    step(X, w, s, acc, xl, xs, wl, q, part, M, bm, bn, warp // S, ((o * U + u) * S + warp % S) * WARP + lane)
                        # Split-K over the lanes: a shuffle tree leaves each row's sum in lane 0.
                        for mb in T.unroll(MB):
                            for r in T.unroll(R):
                                for d in T.unroll(5):
                                    acc[mb, r] = acc[mb, r] + T.tvm_warp_shuffle_down(
                                        T.tvm_warp_activemask(), acc[mb, r], 16 >> d, WARP, WARP)
                        # Split-K over the warps of a group: the first warp adds the others' sums.
                        if S > 1:
                            for mb in T.unroll(MB):
                                for r in T.unroll(R):
                                    if lane == 0:
                                        partial[warp, mb, r] = acc[mb, r]
                            T.tvm_storage_sync("shared")
                        for mb in T.unroll(MB):
                            for r in T.unroll(R):
                                if lane == 0 and warp % S == 0 and bm * MB + mb < M and bn * ROWS + r * G + warp // S < n:
                                    if S > 1:
                                        for j in T.unroll(1, S):
                                            acc[mb, r] = acc[mb, r] + partial[warp + j, mb, r]
                                    Y[bm * MB + mb, bn * ROWS + r * G + warp // S] = acc[mb, r] + bias[bn * ROWS + r * G + warp // S]

    return gemv
