"""A weight-only GEMV on tensor cores: float16 m16n8k16 mma with int4 or int8 codes dequantized in
registers, the weight rows as the mma's A (16 rows per fragment), 8 activation rows as its B.

Why: the CUDA-core GEMV (gemv_kernel.py) spends about 4 instructions per code (SASS of the 4096 x 4096
int4 kernel: converting, multiplying, adding in float32), enough to share the time with memory on the
H200 (Nsight Compute: SM 62% busy for 28672 x 8192), and ptxas issues its loads late to save registers,
so few are in flight. Here a step of 32 codes per lane is about 65 SASS instructions: one lop3 makes a
half2 of (1024 + u) from two codes (a mask and a magic exponent), one half2 add or fused multiply-add
makes them the exact codes, and the mma does 256 multiply-adds per instruction with float32
accumulation. The loads are cp.async copies into a ring of `stages` shared-memory slots per warp, issued
`stages` steps ahead: asynchronous, so ptxas cannot delay them, and no registers wait for them.

Layout (weight_codes.MmaCodes): per 16-row tile and K step (64 values for int4), each lane copies 4
words (16 bytes) of weights; lane 4g + t copies `lane_k` float16 of activation row g (and g + 8), the
k slots of its fragments (permuted so that a lane's are consecutive); two lanes copy the tile's 16 group
scales of the step, which are [groups, rows] float16 (the group size a multiple of the step).

Numerics: codes and float16 activations multiply exactly; each step's products are summed by the mma in
float32, times the row's group scale into a float32 accumulator (a fused multiply-add), so the result
differs from the float32 reference as gemv_kernel.py's does: by the rounding of x and the scales to float16
and by the summation order.

Work split: a warp owns one 16-row tile over every `split_k`-th step of K; a block is `tiles` x `split_k`
warps, the warps of a tile adding their sums through shared memory; grid.y covers the activation rows
in blocks of `m_block` (up to 16: one mma per 8 rows and A fragment, the A decode shared; a block's
shared memory holds that many rows)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from .gemv_kernel import WARP, ceil_div, fma
from .weight_codes import MAGIC_X2, TILE, WORDS_PER_LOAD, MmaCodes, RegisterDecode

MMA_N = 8  # activation rows per mma (B's columns)
MAX_M_BLOCK = 2 * MMA_N  # activation rows per block: two mma per A fragment (gemv_kernel.MAX_ROWS)
FRAGMENT = 8  # float16 values of an A fragment per lane
COPY = 16  # bytes of one cp.async
LOP3_AND_OR = 0xEA  # lop3's truth table for (a & b) | c


@dataclass(frozen=True)
class MmaGemvConfig:
    tiles: int = 1    # 16-row weight tiles per block
    split_k: int = 4  # warps per tile, each over every split_k-th K step
    stages: int = 4   # K steps whose copies a warp has in flight
    m_block: int = MMA_N  # activation rows per block (grid.y covers M): one mma per 8 of them


# How far the default splits K (bench/cuda/int4_gemv.py on the H200, bench/results/cuda runs 7 and 8): up to
# 32 warps per SM of an H100/H200, but once the grid has 8 per SM, not where that makes the warps' rings
# shallower (more split-K sums, fewer bytes in flight per warp: at 4096 x 4096, 8 warps take 5.1 us at
# M = 4 with 8 stages and 8.5 at M = 16 with 4, 16 warps with 4 and 2 stages 5.5 and 11.0; at M = 1 4.6
# against 4.5; at M = 16 this rule picks 4 warps with 8 stages, 8.7 us against 9.2 for 8 warps in run 9).
# 28672 x 8192 wants 4 warps per tile (33.7 us), not 2 (36.2).
TARGET_WARPS = 4096
FILLED_WARPS = 1024
MAX_STAGES = 8
MAX_SHARED = 96 << 10  # bytes of shared memory per block the default config stays under: any arch from sm_80


def ring_bytes(codes: MmaCodes, cfg: MmaGemvConfig) -> int:
    """Shared memory of a block's rings: per warp and stage the weights, the activation rows, the scales."""
    slot = WARP * COPY + cfg.m_block * 4 * codes.lane_k * 2 + TILE * 2
    return cfg.tiles * cfg.split_k * cfg.stages * slot


def shared_words(codes: MmaCodes, cfg: MmaGemvConfig) -> int:
    """uint32 words of the block's one shared allocation: the rings, and over their first bytes (once every
    warp is done with its ring) the split-K sums, 4 float32 per lane and mma column block."""
    sums = cfg.tiles * cfg.split_k * WARP * ceil_div(cfg.m_block, MMA_N) * 4 * 4
    return ceil_div(max(ring_bytes(codes, cfg), sums), 4)


def _ring_config(split: int, steps: int, m_block: int, codes: MmaCodes) -> MmaGemvConfig:
    """At least 4 warps per block; up to MAX_STAGES steps in flight per warp, fewer where the rings would
    pass MAX_SHARED."""
    cfg = MmaGemvConfig(tiles=max(1, 4 // split), split_k=split, stages=min(MAX_STAGES, ceil_div(steps, split)),
                        m_block=m_block)
    while ring_bytes(codes, cfg) > MAX_SHARED and cfg.stages > 1:
        cfg = dataclasses.replace(cfg, stages=cfg.stages // 2)
    return cfg


def default_mma_config(m: int | None, n: int, k: int, codes: MmaCodes) -> MmaGemvConfig:
    """Split K until the grid has TARGET_WARPS warps (up to 16 per tile, at least one step each), past
    FILLED_WARPS only while the rings stay as deep; a static M of up to 16 rows in one block (the weights
    read once), a free M in blocks of 8. bench/cuda/int4_gemv.py times alternatives side by side."""
    tiles, steps = codes.row_tiles(n), k // codes.step_k
    m_block = MMA_N if m is None else min(m, MAX_M_BLOCK)
    cfg = _ring_config(1, steps, m_block, codes)
    while tiles * cfg.split_k < TARGET_WARPS and cfg.split_k < 16 and cfg.split_k * 2 <= steps:
        wider = _ring_config(cfg.split_k * 2, steps, m_block, codes)
        if tiles * cfg.split_k >= FILLED_WARPS and wider.stages < cfg.stages:
            break
        cfg = wider
    return cfg


def supports(codes: MmaCodes, k: int, group_size: int) -> bool:
    return k % codes.step_k == 0 and group_size % codes.step_k == 0


def _half2(value: float):
    return T.Broadcast(T.float16(value), 2)


def _bits(dst, word, how: RegisterDecode):
    """The PTX instruction that puts the half2 bits of the register `how` describes into dst."""
    if how.selector is not None:
        return T.ptx.prmt.b32(dst, word, T.uint32(MAGIC_X2), T.uint32(how.selector))
    shifted = T.shift_right(word, T.uint32(how.shift)) if how.shift else word
    return T.ptx.lop3.b32(dst, shifted, T.uint32(how.mask), T.uint32(MAGIC_X2), LOP3_AND_OR)


def _codes(bits, how: RegisterDecode):
    """The two codes of half2 bits: less the magic (and times 1/16 in the same instruction: __hfma per
    half, which nvcc pairs into one HFMA2)."""
    halves = T.reinterpret("float16x2", bits)
    if how.scale == 1.0:
        return halves + _half2(how.bias)
    return T.call_pure_extern("float16x2", "__hfma", halves, _half2(how.scale), _half2(how.bias))


def _copy(dst, src):
    return T.ptx.cp.async_.cg.shared.global_(T.address_of(dst), T.address_of(src), COPY)


def _sync_warp():
    """bar.warp.sync: orders the lanes' shared-memory accesses (TVM prints no __syncwarp for a warp-scope
    storage sync)."""
    return T.ptx.bar.warp.sync(T.uint32(0xFFFFFFFF))


def mma_gemv_prim_func(n: int, k: int, group_size: int, codes: MmaCodes, cfg: MmaGemvConfig) -> tvm.tirx.PrimFunc:
    """main(x: float16 [M, k], w: uint32 (MmaCodes.pack), s: float16 [k / group_size, tiles * 16],
    bias: float32 [n], y: float32 [M, n]) with M free: y = x @ (decode(w) * s).T + bias."""
    if not supports(codes, k, group_size):
        raise ValueError(f"K ({k}) and the group size ({group_size}) must be multiples of {codes.step_k} for "
                         f"{codes.bits}-bit mma fragments")
    G, S, R, MB = cfg.tiles, cfg.split_k, cfg.stages, cfg.m_block
    if not 1 <= MB <= MAX_M_BLOCK:
        raise ValueError(f"m_block ({MB}) must be 1 to {MAX_M_BLOCK}: the activation rows of two mma")
    NB = ceil_div(MB, MMA_N)  # mma per A fragment, one per 8 activation rows
    NT, SK, NG = codes.row_tiles(n), k // codes.step_k, k // group_size
    W = G * S
    steps = ceil_div(SK, S)  # per warp; past K (S not dividing SK, or the last round of R) they are skipped
    LK, TS, STEP, WF, P = codes.lane_k, codes.tiles_per_step, codes.step_k, codes.words_per_fragment, codes.pairs
    LOAD = WARP * WORDS_PER_LOAD
    HALVES_PER_COPY = COPY // 2
    # The rings' offsets in the one shared allocation (in their own elements): weights, activations, scales.
    X_AT = W * R * LOAD * 4 // 2
    S_AT = X_AT + W * R * MB * 4 * LK
    WORDS = shared_words(codes, cfg)
    decoders = [codes.decoder(r % P) for r in range(4)]

    @T.macro
    def copy(X, w, s, wsh, xsh, ssh, M, bm, tile, warp, lane, slot, st):
        """Step st's weights, activations and scales into the warp's ring slot (cp.async, uncommitted)."""
        if st < SK:
            _copy(wsh[warp, slot, lane * WORDS_PER_LOAD], w[tile, st * LOAD + lane * WORDS_PER_LOAD])
            for nb in T.unroll(NB):
                if nb * MMA_N + lane // 4 < MB and bm * MB + nb * MMA_N + lane // 4 < M:
                    for v in T.unroll(LK // HALVES_PER_COPY):
                        _copy(xsh[warp, slot, nb * MMA_N + lane // 4, lane % 4 * LK + v * HALVES_PER_COPY],
                              X[bm * MB + nb * MMA_N + lane // 4, st * STEP + lane % 4 * LK + v * HALVES_PER_COPY])
            if lane < TILE // HALVES_PER_COPY:
                _copy(ssh[warp, slot, lane * HALVES_PER_COPY], s[st * STEP // group_size, tile * TILE + lane * HALVES_PER_COPY])

    @T.macro
    def compute(acc, d, c, a, b, hb, wl, xl, wsh, xsh, ssh, warp, lane, slot):
        wl[T.ramp(0, 1, WORDS_PER_LOAD)] = wsh[warp, slot, T.ramp(lane * WORDS_PER_LOAD, 1, WORDS_PER_LOAD)]
        for nb in T.unroll(NB):
            for v in T.unroll(LK // 8):
                # B's columns past the block's rows repeat its last row; rows past M were not copied:
                # either only reaches the mma's columns past them (columns do not mix), not stored.
                xl[nb, T.ramp(v * 8, 1, 8)] = xsh[warp, slot, T.min(nb * MMA_N + lane // 4, MB - 1), T.ramp(lane % 4 * LK + v * 8, 1, 8)]
            for i in T.unroll(4):
                d[nb, i] = T.float32(0)
        for j in T.unroll(TS):
            # Registers 0-3 written out: each one's decode is a different expression.
            _bits(hb[0], wl[j * WF], decoders[0])
            _bits(hb[1], wl[j * WF + 1 // P], decoders[1])
            _bits(hb[2], wl[j * WF + 2 // P], decoders[2])
            _bits(hb[3], wl[j * WF + 3 // P], decoders[3])
            a[T.ramp(0, 1, 2)] = _codes(hb[0], decoders[0])
            a[T.ramp(2, 1, 2)] = _codes(hb[1], decoders[1])
            a[T.ramp(4, 1, 2)] = _codes(hb[2], decoders[2])
            a[T.ramp(6, 1, 2)] = _codes(hb[3], decoders[3])
            for nb in T.unroll(NB):
                # B and the sums through buffers of their own, passed at offset 0: TVM stores xl as
                # 128-bit vectors (uint4), and an element offset into it would be printed as pointer
                # arithmetic in uint4 units.
                b[T.ramp(0, 1, 4)] = xl[nb, T.ramp(4 * j, 1, 4)]
                for i in T.unroll(4):
                    c[i] = d[nb, i]
                T.evaluate(T.ptx_legacy.mma("m16n8k16", "row", "col", "fp16", "fp16", "fp32",
                                            a.data, 0, b.data, 0, c.data, 0, False, dtype="float32"))
                for i in T.unroll(4):
                    d[nb, i] = c[i]
        for nb in T.unroll(NB):
            for h in T.unroll(2):
                for e in T.unroll(2):
                    acc[nb, 2 * h + e] = fma(d[nb, 2 * h + e], T.Cast("float32", ssh[warp, slot, lane // 4 + 8 * h]), acc[nb, 2 * h + e])

    @T.prim_func
    def gemv(x: T.handle, w: T.Buffer((NT, SK * LOAD), "uint32"), s: T.Buffer((NG, NT * TILE), "float16"),
             bias: T.Buffer((n,), "float32"), y: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        M = T.int32()
        X = T.match_buffer(x, (M, k), "float16")
        Y = T.match_buffer(y, (M, n), "float32")
        for bm in T.thread_binding((M + MB - 1) // MB, thread="blockIdx.y"):
            for bn in T.thread_binding(ceil_div(NT, G), thread="blockIdx.x"):
                for warp in T.thread_binding(W, thread="threadIdx.y"):
                    for lane in T.thread_binding(WARP, thread="threadIdx.x"):
                        # C fragments, one per 8 activation rows: rows g, g + 8 x columns 2t, 2t + 1
                        acc = T.alloc_buffer((NB, 4), "float32", scope="local")
                        d = T.alloc_buffer((NB, 4), "float32", scope="local")  # one step's sums
                        c = T.alloc_buffer((4,), "float32", scope="local")  # one mma's accumulator
                        a = T.alloc_buffer((FRAGMENT,), "float16", scope="local")
                        b = T.alloc_buffer((4,), "float16", scope="local")  # a B fragment: k slots 2t, 2t + 1, 2t + 8, 2t + 9
                        hb = T.alloc_buffer((4,), "uint32", scope="local")  # the half2 bits of A's registers
                        wl = T.alloc_buffer((WORDS_PER_LOAD,), "uint32", scope="local")
                        xl = T.alloc_buffer((NB, LK), "float16", scope="local")
                        # Views of one allocation at fixed offsets: given separate buffers, TVM's merged
                        # shared memory put the scales' ring on the activations' bytes (split_k = 16), as
                        # if one were dead before the other's copies (cp.async writes it does not see).
                        smem = T.alloc_buffer((WORDS,), "uint32", scope="shared.dyn")
                        wsh = T.decl_buffer((W, R, LOAD), "uint32", data=smem.data, elem_offset=0)
                        xsh = T.decl_buffer((W, R, MB, 4 * LK), "float16", data=smem.data, elem_offset=X_AT)
                        ssh = T.decl_buffer((W, R, TILE), "float16", data=smem.data, elem_offset=S_AT)
                        partial = T.decl_buffer((W, WARP, NB, 4), "float32", data=smem.data, elem_offset=0)  # split-K sums
                        for nb in T.unroll(NB):
                            for i in T.unroll(4):
                                acc[nb, i] = T.float32(0)
                        tile = T.meta_var(bn * G + warp // S)  # the warp's 16 rows; past NT they repeat the last tile
                        loaded = T.meta_var(T.min(tile, NT - 1))
                        # One commit group per step, empty past K, so that waiting for all but the newest
                        # R - 1 groups is waiting for step i.
                        for p in T.unroll(R):
                            copy(X, w, s, wsh, xsh, ssh, M, bm, loaded, warp, lane, p, p * S + warp % S)
                            T.ptx.cp.async_.commit_group()
                        # Unrolled by R, so that each slot and address offset is a constant.
                        for o in range(ceil_div(steps, R)):
                            for r in T.unroll(R):
                                T.ptx.cp.async_.wait_group(R - 1)
                                _sync_warp()  # the other lanes' copies of the activations
                                if (o * R + r) * S + warp % S < SK:
                                    compute(acc, d, c, a, b, hb, wl, xl, wsh, xsh, ssh, warp, lane, r)
                                _sync_warp()  # every lane done with the slot before it is refilled
                                copy(X, w, s, wsh, xsh, ssh, M, bm, loaded, warp, lane, r, (o * R + r + R) * S + warp % S)
                                T.ptx.cp.async_.commit_group()
                        if S > 1:
                            # `partial` is on the rings' bytes: every warp must be done with its ring first.
                            T.tvm_storage_sync("shared")
                            for nb in T.unroll(NB):
                                for i in T.unroll(4):
                                    partial[warp, lane, nb, i] = acc[nb, i]
                            T.tvm_storage_sync("shared")
                        for nb in T.unroll(NB):
                            for h in T.unroll(2):
                                for e in T.unroll(2):
                                    column = T.meta_var(nb * MMA_N + lane % 4 * 2 + e)  # of the block's rows of x
                                    row = T.meta_var(tile * TILE + lane // 4 + 8 * h)  # of the weight (of y's columns)
                                    if warp % S == 0 and column < MB and bm * MB + column < M and row < n:
                                        if S > 1:
                                            for j in T.unroll(1, S):
                                                acc[nb, 2 * h + e] = acc[nb, 2 * h + e] + partial[warp + j, lane, nb, 2 * h + e]
                                        Y[bm * MB + column, row] = acc[nb, 2 * h + e] + bias[row]

    return gemv
