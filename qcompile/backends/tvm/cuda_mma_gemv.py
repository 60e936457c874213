"""A weight-only GEMV on tensor cores: float16 m16n8k16 mma with int4 or int8 codes dequantized in
registers, the weight rows as the mma's A (16 rows per fragment), up to 8 activation rows as its B.

Why: the CUDA-core GEMV (cuda_gemv.py) spends about 3 instructions per code (converting, multiplying,
adding in float32), enough to share the time with memory on the H200 (Nsight Compute: SM 62% busy for
28672 x 8192). Here a code costs about one: a mask and a magic exponent make a half2 of (1024 + u) from
two codes, one subtraction makes them the exact codes, and the mma does 256 multiply-adds per lane
instruction with float32 accumulation.

Layout (cuda_weight_codes.MmaCodes): per 16-row tile and K step (64 values for int4), each lane loads 4
words with one 128-bit load and its step's activations, `lane_k` consecutive float16 (the k slots of the
fragments are permuted so that they are consecutive). Scales are [groups, rows] float16, one per step and
row (the group size a multiple of the step).

Numerics: codes and float16 activations multiply exactly; each step's products are summed by the mma in
float32, times the row's group scale into a float32 accumulator (a fused multiply-add), so the result
differs from the float32 reference as cuda_gemv.py's does: by the rounding of x and the scales to float16
and by the summation order.

Work split: a warp owns one 16-row tile over every `split_k`-th step of K; a block is `tiles` x `split_k`
warps, the warps of a tile adding their sums through shared memory; grid.y covers the activation rows
in blocks of 8 (the mma's N)."""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from .cuda_weight_codes import MAGIC_X2, TILE, WORDS_PER_LOAD, MmaCodes, RegisterDecode

WARP = 32
MMA_N = 8  # activation rows per mma (B's columns)
FRAGMENT = 8  # float16 values of an A fragment per lane


@dataclass(frozen=True)
class MmaGemvConfig:
    tiles: int = 1    # 16-row weight tiles per block
    split_k: int = 4  # warps per tile, each over every split_k-th K step
    unroll: int = 4   # K steps per warp whose loads are issued together


TARGET_WARPS = 2048  # 16 per SM of an H100/H200: enough 128-bit loads in flight to cover memory latency
MAX_UNROLL = 8


def default_mma_config(n: int, k: int, codes: MmaCodes) -> MmaGemvConfig:
    """Split K until the grid has TARGET_WARPS warps (up to 16 per tile, at most one step each), then at
    least 4 warps per block; each warp's loads all in flight for up to MAX_UNROLL steps. A starting point,
    not yet measured: bench/cuda_int4_gemv.py times alternatives side by side."""
    tiles, steps = codes.row_tiles(n), k // codes.step_k
    split = 1
    while tiles * split < TARGET_WARPS and split < 16 and split * 2 <= steps:
        split *= 2
    return MmaGemvConfig(tiles=max(1, 4 // split), split_k=split, unroll=min(MAX_UNROLL, _ceil_div(steps, split)))


def supports(codes: MmaCodes, k: int, group_size: int) -> bool:
    return k % codes.step_k == 0 and group_size % codes.step_k == 0


def _fma(a, b, c):
    return T.call_pure_extern("float32", "fmaf", a, b, c)


def _half2(value: float):
    return T.Broadcast(T.float16(value), 2)


def _decode(word, how: RegisterDecode):
    """The fragment register `how` describes, from `word` (lop3 and byte_perm through cuda_build's device
    functions; __hfma per half, which nvcc pairs into one HFMA2)."""
    if how.selector is not None:
        bits = T.call_pure_extern("uint32", "__byte_perm", word, T.uint32(MAGIC_X2), T.uint32(how.selector))
    else:
        shifted = T.shift_right(word, T.uint32(how.shift)) if how.shift else word
        bits = T.call_pure_extern("uint32", "qc_and_or", shifted, T.uint32(how.mask), T.uint32(MAGIC_X2))
    halves = T.reinterpret("float16x2", bits)
    if how.scale == 1.0:
        return halves + _half2(how.bias)
    return T.call_pure_extern("float16x2", "__hfma", halves, _half2(how.scale), _half2(how.bias))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def mma_gemv_prim_func(n: int, k: int, group_size: int, codes: MmaCodes, cfg: MmaGemvConfig) -> tvm.tirx.PrimFunc:
    """main(x: float16 [M, k], w: uint32 (MmaCodes.pack), s: float16 [k / group_size, tiles * 16],
    bias: float32 [n], y: float32 [M, n]) with M free: y = x @ (decode(w) * s).T + bias."""
    if not supports(codes, k, group_size):
        raise ValueError(f"K ({k}) and the group size ({group_size}) must be multiples of {codes.step_k} for "
                         f"{codes.bits}-bit mma fragments")
    G, S = cfg.tiles, cfg.split_k
    NT, SK, NG = codes.row_tiles(n), k // codes.step_k, k // group_size
    W = G * S
    steps = _ceil_div(SK, S)
    U = min(cfg.unroll, steps)
    outer = _ceil_div(steps, U)
    ragged = outer * U * S != SK  # the last steps of some warps lie past K
    LK, TS, STEP, WF, P = codes.lane_k, codes.tiles_per_step, codes.step_k, codes.words_per_fragment, codes.pairs
    LOAD = WARP * WORDS_PER_LOAD
    decoders = [codes.decoder(r % P) for r in range(4)]

    @T.macro
    def load(X, w, wl, xl, M, bm, tile, lane, u, st):
        wl[u, T.ramp(0, 1, WORDS_PER_LOAD)] = w[tile, T.ramp(st * LOAD + lane * WORDS_PER_LOAD, 1, WORDS_PER_LOAD)]
        for v in T.unroll(LK // 8):
            xl[u, T.ramp(v * 8, 1, 8)] = X[T.min(bm * MMA_N + lane // 4, M - 1), T.ramp(st * STEP + lane % 4 * LK + v * 8, 1, 8)]

    @T.macro
    def compute(s, acc, d, a, b, wl, xl, tile, lane, u, st):
        for i in T.unroll(4):
            d[i] = T.float32(0)
        for j in T.unroll(TS):
            # Registers 0-3 written out: each one's decode is a different expression.
            a[T.ramp(0, 1, 2)] = _decode(wl[u, j * WF], decoders[0])
            a[T.ramp(2, 1, 2)] = _decode(wl[u, j * WF + 1 // P], decoders[1])
            a[T.ramp(4, 1, 2)] = _decode(wl[u, j * WF + 2 // P], decoders[2])
            a[T.ramp(6, 1, 2)] = _decode(wl[u, j * WF + 3 // P], decoders[3])
            # B through a buffer of its own, passed at offset 0: TVM stores xl as 128-bit vectors (uint4),
            # and an element offset into it would be printed as pointer arithmetic in uint4 units.
            b[T.ramp(0, 1, 4)] = xl[u, T.ramp(4 * j, 1, 4)]
            T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "fp16", "fp16", "fp32",
                                        a.data, 0, b.data, 0, d.data, 0, False, dtype="float32"))
        for h in T.unroll(2):
            scale = T.Cast("float32", s[st * STEP // group_size, tile * TILE + lane // 4 + 8 * h])
            for e in T.unroll(2):
                acc[2 * h + e] = _fma(d[2 * h + e], scale, acc[2 * h + e])

    @T.prim_func
    def gemv(x: T.handle, w: T.Buffer((NT, SK * LOAD), "uint32"), s: T.Buffer((NG, NT * TILE), "float16"),
             bias: T.Buffer((n,), "float32"), y: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        M = T.int32()
        X = T.match_buffer(x, (M, k), "float16")
        Y = T.match_buffer(y, (M, n), "float32")
        for bm in T.thread_binding((M + MMA_N - 1) // MMA_N, thread="blockIdx.y"):
            for bn in T.thread_binding(_ceil_div(NT, G), thread="blockIdx.x"):
                for warp in T.thread_binding(W, thread="threadIdx.y"):
                    for lane in T.thread_binding(WARP, thread="threadIdx.x"):
                        acc = T.alloc_buffer((4,), "float32", scope="local")  # the C fragment: rows g, g + 8 x columns 2t, 2t + 1
                        d = T.alloc_buffer((4,), "float32", scope="local")  # one step's sums
                        a = T.alloc_buffer((FRAGMENT,), "float16", scope="local")
                        b = T.alloc_buffer((4,), "float16", scope="local")  # a B fragment: k slots 2t, 2t + 1, 2t + 8, 2t + 9
                        wl = T.alloc_buffer((U, WORDS_PER_LOAD), "uint32", scope="local")
                        xl = T.alloc_buffer((U, LK), "float16", scope="local")
                        partial = T.alloc_buffer((W, WARP, 4), "float32", scope="shared")
                        for i in T.unroll(4):
                            acc[i] = T.float32(0)
                        for o in range(outer):
                            # All loads of the U steps first, so that they are in flight together.
                            for u in T.unroll(U):
                                if ragged:
                                    if (o * U + u) * S + warp % S < SK:
                                        load(X, w, wl, xl, M, bm, T.min(bn * G + warp // S, NT - 1), lane, u, (o * U + u) * S + warp % S)
                                else:
                                    load(X, w, wl, xl, M, bm, T.min(bn * G + warp // S, NT - 1), lane, u, (o * U + u) * S + warp % S)
                            for u in T.unroll(U):
                                if ragged:
                                    if (o * U + u) * S + warp % S < SK:
                                        compute(s, acc, d, a, b, wl, xl, T.min(bn * G + warp // S, NT - 1), lane, u, (o * U + u) * S + warp % S)
                                else:
                                    compute(s, acc, d, a, b, wl, xl, T.min(bn * G + warp // S, NT - 1), lane, u, (o * U + u) * S + warp % S)
                        if S > 1:
                            for i in T.unroll(4):
                                partial[warp, lane, i] = acc[i]
                            T.tvm_storage_sync("shared")
                        for h in T.unroll(2):
                            for e in T.unroll(2):
                                if warp % S == 0 and bm * MMA_N + lane % 4 * 2 + e < M and (bn * G + warp // S) * TILE + lane // 4 + 8 * h < n:
                                    if S > 1:
                                        for j in T.unroll(1, S):
                                            acc[2 * h + e] = acc[2 * h + e] + partial[warp + j, lane, 2 * h + e]
                                    Y[bm * MMA_N + lane % 4 * 2 + e, (bn * G + warp // S) * TILE + lane // 4 + 8 * h] = (
                                        acc[2 * h + e] + bias[(bn * G + warp // S) * TILE + lane // 4 + 8 * h])

    return gemv
