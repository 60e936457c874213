"""Exact uint8 x int8 GEMM with a fused requantize epilogue: a hand-scheduled TVM TIR kernel for every CPU ISA (isa.py).

Semantics, bit-exact with `qcompile.quant.ops.linear_int` (zero point folded into the bias) followed by
`requantize_fixed` with one shift for all channels:

    acc[m, n] = sum_k int32(A[m, k]) * int32(W[n, k]) + bias[n]                          (int32)
    y[m, n]   = clamp(((acc * mult[n] + 2^(shift-1)) >> shift) + out_zp, qmin, qmax)    (int64 math)

A is uint8 [M, K] with M free at run time; W is int8 [N, K] and is packed once, at build time.
The int32 accumulator wraps like every int32 GEMM: exact while |acc| < 2^31 (always for K <= 65793).

Instruction choice. vpmaddubsw (what fbgemm's AVX2 kernel uses) adds two u8*s8 products into a
*saturating* int16: 2 * 255 * 128 = 65280 > 32767, so it is not exact for full-range data (PyTorch's
fbgemm linear really does return a clipped result then; its x86 qconfig uses 7-bit activations).
- AVX2: A is widened to int16 once per call (an O(M*K) pass) and the inner product is vpmaddwd (two
  s16*s16 products summed into s32, exact) + vpaddd. That is 16 MACs per multiply uop, the same as
  fbgemm's vpmaddubsw + vpmaddwd(ones) pair per 32 MACs, but 4 instead of 3 vector uops per 32 MACs.
  On Zen 3 the register-tile loop alone (data in L1) runs as fast as fbgemm's whole 1024^3 GEMM; the
  full kernel loses ~5% to weight-panel refetches from L3 and ~5% to the epilogue (measured).
- AVX512-VNNI: vpdpbusd (four u8*s8 products summed into s32 without intermediate saturation) is exact
  and reads A in place. It is chosen from the target's CPU features. On a 2-core Intel Xeon with
  AVX512-VNNI it ran 1024^3 at 1.4x fbgemm's (AVX-512) int8 linear.

Kernel shape (GotoBLAS-style register blocking):
- W is packed as int32 "words" [N/NR, K/G, NR]: each word holds the G (2 for int16, 4 for int8) k-values
  of one output column, so one vector load is the weight operand of one vpmaddwd / vpdpbusd.
- Each MR x NR output tile keeps MR * NR/L int32 accumulator vectors in registers over the whole K
  loop; per k-group it loads NR/L weight vectors, broadcasts one A word per row (vpbroadcastd) and
  issues MR * NR/L dot products. MR x NR is chosen per shape by a small cost model (choose_tiling):
  padding rows and columns, loads per dot product, accumulator latency, the epilogue and the split
  over threads; e.g. 6x16 / 4x24 (AVX2) and 8x32 / 16x16 / 5x48 (VNNI) for MobileNetV2's narrow GEMMs.
- Jobs (a row block times a group of weight panels) run in parallel; the row block visits the group's
  panels in turn, so its A rows stay in L1 and the group's weight panels in L2, and each thread owns a
  slice of the weights.
- The accumulators start from the bias, and the requantize epilogue runs on the register tile right
  after its K loop: the int32 accumulator matrix is never written to memory.

AArch64 (Isa.arch "aarch64"): the same kernel with sdot (NEON_DOTPROD, A flipped to a - 128 by XOR, the
bias corrected by 128 * sum(w)), and, where the CPU has i8mm, with smmla (NEON_I8MM, Isa.rows = 2): one
smmla multiplies two A rows of 8 int8 by two weight columns of 8 int8 into a 2x2 int32 block, 32 MACs
against sdot's 16. A is copied once per call into row pairs (already a - 128, rows padded to whole tiles),
the weights pack as for the other ISAs with a k-group of 8 (a 4-word vector is two columns), and the
epilogue interleaves the 2x2 blocks into rows before requantizing. In the K loop of a 26x4 tile that
is 26 smmla + 13 A loads + one ldp of the 2 weight vectors + 4 loop instructions per 8 k-values (19 MACs per instruction;
the sdot kernel's 13x8 tile: 5.9). Executed on the emulated device, MobileNetV2's GEMMs take 0.50x the
instructions of the sdot build. The row-pair copy moves 8 bytes per ldr/eor/str.

int4 weights (WeightFormat, chosen by the weight's storage bits; VNNI only): one packed word holds the
4-bit weights of two k-groups of its column, as nibbles, so each weight vector load brings 128 weights
instead of 64 and the weight panel is half the bytes (what a memory-bound GEMV is limited by). The K loop
does not sign-extend them: a nibble moved to the high half of its byte with the low half zero *is* the
signed byte 16 * w (low nibble: shifted up by 4 and masked, high nibble: masked), which vpdpbusd takes
as is; the unpacked vectors serve every row of the tile. The accumulators then hold 16 * sum(a * w) (|16 * w| <= 128, so the int32 bound is the int8 kernel's)
and start from zero; the epilogue shifts by 4 (exact: a multiple of 16) and adds the bias.

The kernel is written directly as TIR (TVMScript with macros) rather than derived from a TE compute
with `Schedule.tensorize`: with apache-tvm-ffi 0.1.15 (this venv) `tensorize` segfaults, because it
deep-copies the intrinsic through the JSON serializer and `tvm.ir.save_json` of any TIR node crashes
there (apache-tvm-ffi 0.1.14.post0 works). The loop structure is the one a schedule would produce.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import tvm
from tvm.script import tirx as T

from ..ops import high_word_rounding
from .isa import Isa, host_supports, host_target, isa_for
from .parallelism import is_small, static_loop
from .tiling import Tiling, ceil_div, check_tiling, choose_tiling

__all__ = [
    "Requant", "GemmKernel", "build_gemm", "gemm_prim_func", "pack_weight", "pack_weight_int4", "pad_channels",
    "WeightFormat", "INT8_WEIGHTS", "INT4_WEIGHTS", "weight_format", "requantize_lanes", "reference_gemm",
]


# ---------------------------------------------------------------- parameters
@dataclass(frozen=True)
class Requant:
    """Fixed-point requantization: clamp(((acc * mult[n] + 2^(shift-1)) >> shift) + out_zp, qmin, qmax)."""

    shift: int
    out_zp: int
    qmin: int = 0
    qmax: int = 255
    out_dtype: str = "uint8"

    def __post_init__(self):
        if not 1 <= self.shift <= 62:
            raise ValueError(f"shift must be in [1, 62], got {self.shift}")
        info = np.iinfo(self.out_dtype)
        if not info.min <= self.qmin <= self.qmax <= info.max:
            raise ValueError(f"[{self.qmin}, {self.qmax}] does not fit {self.out_dtype}")


# ---------------------------------------------------------------- packing (build time, numpy)
def pack_weight(w: np.ndarray, isa: Isa, nr: int) -> np.ndarray:
    """int8 [N, K] -> int32 words [ceil(N/nr), ceil(K/group), nr * isa.rows], zero padded.

    Word (p, g, j) holds W[p*nr + j, g*group : (g+1)*group] as int16 (AVX2) or int8 (VNNI) values, lowest
    k in the lowest bytes, which is the operand order of vpmaddwd / vpdpbusd. With smmla's group of 8
    (isa.rows == 2) column j takes words 2j and 2j+1: a 4-word vector holds two columns' 8 values each,
    the 8x2 operand of smmla.
    """
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise TypeError(f"weight must be int8 [N, K], got {w.dtype} {w.shape}")
    n, k = w.shape
    panels, groups = ceil_div(n, nr), ceil_div(k, isa.group)
    elem = np.int16 if isa.group == 2 else np.int8
    padded = np.zeros((panels * nr, groups * isa.group), elem)
    padded[:n, :k] = w
    words = padded.reshape(panels, nr, groups, isa.group).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(words).view(np.int32).reshape(panels, groups, nr * isa.rows)


def pack_weight_int4(w: np.ndarray, isa: Isa, nr: int) -> np.ndarray:
    """int8 [N, K] with values in [-8, 7] -> int32 words [ceil(N/nr), ceil(K/(2*group)), nr], zero padded.

    Word (p, g, j), byte i: low nibble W[p*nr + j, 2g*group + i], high nibble W[p*nr + j, (2g+1)*group + i]
    (two's complement nibbles): the same k order as pack_weight, two k-groups per word.
    """
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise TypeError(f"weight must be int8 [N, K], got {w.dtype} {w.shape}")
    if w.size and (w.min() < -8 or w.max() > 7):
        raise ValueError(f"int4 weights must lie in [-8, 7], got [{w.min()}, {w.max()}]")
    if isa.group != 4:
        raise ValueError(f"int4 weights need byte weight lanes; {isa.name} reads {isa.group} per word")
    n, k = w.shape
    panels, words = ceil_div(n, nr), ceil_div(k, 2 * isa.group)
    padded = np.zeros((panels * nr, words * 2 * isa.group), np.int8)
    padded[:n, :k] = w
    halves = padded.reshape(panels, nr, words, 2, isa.group).astype(np.uint8) & 0xF
    packed = halves[:, :, :, 0] | (halves[:, :, :, 1] << 4)  # [panels, nr, words, group] bytes
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3)).view(np.int32).reshape(panels, words, nr)


def _int8_operand(words, g):
    return words


def _int4_operand_x16(words, g):
    """k-group g (0: low nibbles, 1: high nibbles) of a vector of int4 words (16 lanes: the format needs
    VNNI's byte lanes) as bytes 16 * w: (b << 4 - 4g) & 0xF0. x86 has no byte shift: LLVM emits vpsllw +
    vpandd for the low nibbles (one vgf2p8affineqb where the CPU has GFNI), one vpandd for the high ones.
    g is an unrolled loop variable, so the shift folds to a constant."""
    as_bytes = tvm.tirx.reinterpret("int8x64", words)
    shift = tvm.tirx.Broadcast((4 - 4 * g).astype("int8"), 64)
    high_half = tvm.tirx.Broadcast(tvm.tirx.const(-16, "int8"), 64)
    return tvm.tirx.reinterpret("int32x16", (as_bytes << shift) & high_half)


@dataclass(frozen=True)
class WeightFormat:
    """How packed weight words hold the weights, and how the K loop reads them."""

    name: str
    bits: int
    groups_per_word: int  # k-groups (of Isa.group values) one packed word holds
    acc_shift: int  # the K loop accumulates a * w * 2^acc_shift; the epilogue shifts it back before the bias
    lane_group: int | None  # the Isa.group the format needs (None: any)
    lanes: int | None  # the Isa.lanes the format's operand is written for (None: any)
    pack: Callable[[np.ndarray, Isa, int], np.ndarray]  # (int8 [N, K], isa, nr) -> int32 words
    operand: Callable  # (loaded vector of words, k-group g within the word) -> the dot product's weight operand

    def supports(self, isa: Isa) -> bool:
        return self.lane_group in (None, isa.group) and self.lanes in (None, isa.lanes)


INT8_WEIGHTS = WeightFormat("int8", 8, 1, 0, None, None, pack_weight, _int8_operand)
INT4_WEIGHTS = WeightFormat("int4", 4, 2, 4, 4, 16, pack_weight_int4, _int4_operand_x16)
# storage bits of the weight constant -> its kernel format; widths without one run as int8 values.
WEIGHT_FORMATS: dict[int, WeightFormat] = {8: INT8_WEIGHTS, 4: INT4_WEIGHTS}


def weight_format(bits: int | None, isa: Isa) -> WeightFormat:
    """The packed format for weights of `bits` bits (None: 8) on `isa`: int8 words where `isa` has no
    narrower kernel (AVX2 reads int16 lanes)."""
    fmt = WEIGHT_FORMATS.get(bits or 8, INT8_WEIGHTS)
    return fmt if fmt.supports(isa) else INT8_WEIGHTS


def pad_channels(v, n_padded: int) -> np.ndarray:
    """Per-channel int32 vector padded with zeros to the packed width (the kernel reads full tiles)."""
    v = np.asarray(v)
    if v.ndim != 1 or not np.all((v >= -(2**31)) & (v < 2**31)):
        raise ValueError("per-channel values must be a 1-D int32 range vector")
    out = np.zeros(n_padded, np.int32)
    out[: v.shape[0]] = v
    return out


# ---------------------------------------------------------------- the TIR kernel
def _high_dword_of_products(acc, mult, rnd: int, lanes: int):
    """(int64(acc) * mult + rnd) >> 32 per lane, as int32, in the shape vpmuldq wants.

    vpmuldq multiplies the even int32 lanes into int64s; odd lanes are moved down with a 64-bit
    logical shift. LLVM turns `sext_inreg64(x) * sext_inreg64(y)` into vpmuldq directly, and the final
    interleave of the two high halves into one shuffle, instead of widening both operands first."""
    if lanes == 1:
        return T.Cast("int32", (T.Cast("int64", acc) * T.Cast("int64", mult) + T.int64(rnd)) >> T.int64(32))
    half = lanes // 2
    q, uq = f"int64x{half}", f"uint64x{half}"
    c = lambda v, dtype: tvm.tirx.Broadcast(tvm.tirx.const(v, dtype), half)
    plus_rnd = (lambda x: x + c(rnd, "int64")) if rnd else (lambda x: x)
    low_sext = lambda x: (x << c(32, "int64")) >> c(32, "int64")
    high_down = lambda x: T.reinterpret(q, T.reinterpret(uq, x) >> c(32, "uint64"))
    a, m = T.reinterpret(q, acc), T.reinterpret(q, mult)
    even = plus_rnd(low_sext(a) * low_sext(m))
    odd = plus_rnd(low_sext(high_down(a)) * low_sext(high_down(m)))
    as32 = lambda x: T.reinterpret(f"int32x{lanes}", x)
    high_lanes = [j for i in range(half) for j in (2 * i + 1, lanes + 2 * i + 1)]
    return tvm.tirx.Shuffle([as32(even), as32(odd)], high_lanes)




def requantize_lanes(acc, mult, lanes: int, rq: Requant):
    """int32 accumulators (`lanes` of them) -> clamped output; equal to requantize_fixed's int64 math."""
    vec = (lambda dtype: dtype) if lanes == 1 else (lambda dtype: f"{dtype}x{lanes}")

    def const(value: int, dtype: str):
        c = tvm.tirx.const(value, dtype)
        return c if lanes == 1 else tvm.tirx.Broadcast(c, lanes)

    # |acc * mult| <= 2^62, so adding the rounding term 2^(shift-1) cannot overflow int64.
    if rq.shift >= 32 and abs(rq.out_zp) < 2**29:
        # floor(p / 2^s) == floor(floor(p / 2^32) / 2^(s - 32)): take the high dword of the 64-bit product
        # (a shuffle), then shift, add and clamp in int32. AVX2 has no 64-bit arithmetic shift and no
        # 64-bit min/max, so this is about half the instructions of the plain int64 form below.
        # For shift >= 33 the rounding term 2^(s-1) is a multiple of 2^32 and moves to the int32 side.
        rnd64, rnd32 = high_word_rounding(rq.shift)
        high = _high_dword_of_products(acc, mult, rnd64, lanes)  # |high| < 2^30
        y = ((high + const(rnd32, "int32")) >> const(rq.shift - 32, "int32")) + const(rq.out_zp, "int32")
        dtype = "int32"
    else:
        prod = T.Cast(vec("int64"), acc) * T.Cast(vec("int64"), mult) + const(1 << (rq.shift - 1), "int64")
        y, dtype = (prod >> const(rq.shift, "int64")) + const(rq.out_zp, "int64"), "int64"
    y = T.max(T.min(y, const(rq.qmax, dtype)), const(rq.qmin, dtype))
    return T.Cast(vec(rq.out_dtype), y)


def _panel_group(panels: int, wanted: int) -> int:
    return max(d for d in range(1, min(panels, wanted) + 1) if panels % d == 0)


def gemm_prim_func(n: int, k: int, requant: Requant | None, isa: Isa, tiling: Tiling,
                   weights: WeightFormat = INT8_WEIGHTS, m: int | None = None) -> tvm.tirx.PrimFunc:
    """main(A: uint8 [M, k], Wp: packed words, bias: int32 [NP], mult: int32 [NP], Out) with M free.
    `m`: the M the model will call it with, when known, so that the loops are built serial or parallel
    (parallelism.py) without a run-time branch.

    Out is `requant.out_dtype` [M, n], or the int32 accumulator when `requant` is None (mult unused).
    bias and mult are zero-padded to NP = ceil(n / nr) * nr. Wp is `weights.pack`'s layout.

    With isa.rows == R > 1 (smmla) the accumulators are R x lanes/R blocks: A is first copied (offset by
    isa.a_offset) into R-row groups A_w[M/R, K*R] whose k-group g of group p is the R rows' G values one
    after the other (one vector load per A operand, rows padded to whole tiles: no row guard in the K
    loop), and the epilogue interleaves R block registers into R row vectors before the usual requantize.
    """
    check_tiling(isa, tiling)
    loop = static_loop(m, n, k)  # None (branch at run time) when m is free
    if not weights.supports(isa):
        raise ValueError(f"{weights.name} weights need {weights.lane_group} values per lane; {isa.name} has {isa.group}")
    L, G, MR, NR = isa.lanes, isa.group, tiling.mr, tiling.nr
    GW, SHIFT = weights.groups_per_word, weights.acc_shift
    scaled = SHIFT > 0  # accumulators of a * w * 2^SHIFT: start at zero, the bias joins after the K loop
    R, C = isa.rows, isa.columns  # one dot product: R rows x C columns of accumulators
    NV = NR * R // L  # accumulator registers per R rows (and weight vectors per k-group)
    NO, KW = ceil_div(n, NR), ceil_div(k, G * GW)
    NP, KG = NO * NR, KW * G * GW
    full_n = n % NR == 0  # no ragged last panel, so the epilogue needs no column guard
    # A is read as G-element words; it needs a padded (and, on AVX2, widened) copy unless it can be
    # read in place: VNNI with k a multiple of the k-groups per weight word.
    copy_a = isa.a_dtype != "uint8" or k % (G * GW) != 0 or R > 1
    panel_group = _panel_group(NO, tiling.panels)
    dot = isa.dot
    out_dtype = requant.out_dtype if requant else "int32"

    def requantize(acc, mult, lanes):
        return requantize_lanes(acc, mult, lanes, requant)

    @T.macro
    def widen_a(A, A_w, M, loop):
        # One pass over A (parallel over rows) so that the hot loop can broadcast ready-made words.
        for m in loop(M):
            for kk in range(k):
                A_w[m, kk] = T.Cast(isa.a_dtype, A[m, kk])
            for kk in range(k, KG):
                A_w[m, kk] = T.Cast(isa.a_dtype, 0)

    @T.macro
    def copy_row_groups(A, A_w, M, MP, loop):
        # A_w[p, g*G*R + i*G + j] = A[p*R + i, g*G + j] - a_offset (int8); zeros past M and past k.
        # Whole k-groups move as G-byte vectors (load, flip, store); only a ragged last group is scalar.
        offset = T.meta_var(lambda x, lanes: T.Cast(
            f"{isa.a_dtype}x{lanes}" if lanes > 1 else isa.a_dtype,
            T.Cast(f"int16x{lanes}" if lanes > 1 else "int16", x) - (
                T.Broadcast(T.int16(isa.a_offset), lanes) if lanes > 1 else T.int16(isa.a_offset))))
        for p in loop(MP):
            for i in T.unroll(R):
                if p * R + i < M:
                    for g in range(k // G):
                        A_w[p, T.ramp(g * (G * R) + i * G, 1, G)] = offset(A[p * R + i, T.ramp(g * G, 1, G)], G)
                    for kk in range(k // G * G, KG):
                        A_w[p, kk // G * (G * R) + i * G + kk % G] = T.Select(
                            kk < k, offset(A[p * R + i, T.min(kk, k - 1)], 1), T.Cast(isa.a_dtype, 0))
                else:
                    for g in range(KG // G):
                        A_w[p, T.ramp(g * (G * R) + i * G, 1, G)] = T.Broadcast(T.Cast(isa.a_dtype, 0), G)

    def bias_vector(bias, n0, v):
        """The bias of accumulator register v's lanes: its C columns, once per row of the block."""
        if R == 1:
            return bias[T.ramp(n0 + v * L, 1, L)]
        return tvm.tirx.Shuffle([bias[T.ramp(n0 + v * C, 1, C)]] * R, list(range(L)))  # TIR shuffles cannot repeat lanes

    def row_vector(acc, r, i, w):
        """Row i of block row r, columns w*L .. w*L+L-1: lanes i*C .. i*C+C-1 of R neighbouring registers."""
        return tvm.tirx.Shuffle([acc[r, T.ramp((w * R + t) * L, 1, L)] for t in range(R)],
                                [t * L + i * C + j for t in range(R) for j in range(C)])

    @T.macro
    def store_rows(acc, Out, mult, M, m0, n0, guard_rows):
        for mi in T.unroll(MR):
            if not guard_rows or m0 + mi < M:
                if full_n or n0 + NR <= n:
                    for v in T.unroll(NR // L):
                        if requant is not None:
                            Out[m0 + mi, T.ramp(n0 + v * L, 1, L)] = requantize(
                                acc[mi, T.ramp(v * L, 1, L)], mult[T.ramp(n0 + v * L, 1, L)], L)
                        else:
                            Out[m0 + mi, T.ramp(n0 + v * L, 1, L)] = acc[mi, T.ramp(v * L, 1, L)]
                else:  # ragged last panel: scalar stores of the columns that exist
                    for ni in range(NR):
                        if n0 + ni < n:
                            if requant is not None:
                                Out[m0 + mi, n0 + ni] = requantize(acc[mi, ni], mult[n0 + ni], 1)
                            else:
                                Out[m0 + mi, n0 + ni] = acc[mi, ni]

    @T.macro
    def store_tile(acc, Out, mult, M, m0, n0):
        # Row guards only in the last row block: elsewhere the epilogue is one straight-line block,
        # in which LLVM shares the per-column work (multiplier loads and shifts) between the rows.
        if m0 + MR <= M:
            store_rows(acc, Out, mult, M, m0, n0, False)
        else:
            store_rows(acc, Out, mult, M, m0, n0, True)

    @T.macro
    def tiles(A_w, Wp, bias, mult, Out, M, loop):
        MO = T.meta_var((M + MR - 1) // MR)  # meta_var: a plain `MO = ...` would allocate a 1-element buffer
        # A job is one row block times one group of panels. With static parallel chunks each thread runs
        # consecutive jobs, i.e. mostly whole panel groups: its own slice of the weights stays in its L2,
        # while the row block's A rows stay in L1 across the group's panels.
        for job in loop(MO * (NO // panel_group)):
            m0 = T.meta_var(job % MO * MR)
            for p in range(panel_group):
                po = T.meta_var(job // MO * panel_group + p)
                n0 = T.meta_var(po * NR)
                # The accumulators live in vector registers. Scope "global": in TVM 0.27 a "local" buffer
                # becomes a TVMBackendAllocWorkspace call per tile, and so does a "global" one over 1 KiB
                # (check_tiling), while a smaller one is a stack alloca that LLVM promotes to registers.
                acc = T.alloc_buffer((MR // R, NR * R), "int32")  # register (r, v): acc[r, v*L : (v+1)*L]
                for mi in T.unroll(MR // R):
                    for v in T.unroll(NV):
                        if scaled:
                            acc[mi, T.ramp(v * L, 1, L)] = T.Broadcast(T.int32(0), L)
                        else:
                            acc[mi, T.ramp(v * L, 1, L)] = bias_vector(bias, n0, v)
                for kw in range(KW):
                    for mi in T.unroll(MR // R):
                        for g in T.unroll(GW):
                            if R == 1:
                                # Rows past M (last row block) recompute row M-1; their results are never stored.
                                a_word = T.meta_var(T.reinterpret(
                                    "int32", A_w[T.min(m0 + mi, M - 1), T.ramp((kw * GW + g) * G, 1, G)]))
                                for v in T.unroll(NV):
                                    acc[mi, T.ramp(v * L, 1, L)] = dot(
                                        acc[mi, T.ramp(v * L, 1, L)], a_word, weights.operand(Wp[po, kw, T.ramp(v * L, 1, L)], g))
                            else:
                                # The R rows' G values of this k-group: one vector load from the row-group copy.
                                a_rows = T.meta_var(A_w[job % MO * (MR // R) + mi, T.ramp((kw * GW + g) * G * R, 1, G * R)])
                                for v in T.unroll(NV):
                                    acc[mi, T.ramp(v * L, 1, L)] = dot(
                                        acc[mi, T.ramp(v * L, 1, L)], a_rows, weights.operand(Wp[po, kw, T.ramp(v * L, 1, L)], g))
                if scaled:
                    for mi in T.unroll(MR // R):
                        for v in T.unroll(NV):
                            acc[mi, T.ramp(v * L, 1, L)] = (acc[mi, T.ramp(v * L, 1, L)] >> T.Broadcast(
                                T.int32(SHIFT), L)) + bias_vector(bias, n0, v)
                if R == 1:
                    store_tile(acc, Out, mult, M, m0, n0)
                else:
                    rows = T.alloc_buffer((MR, NR), "int32")  # the tile row by row, for the epilogue
                    for mi in T.unroll(MR // R):
                        for i in T.unroll(R):
                            for w in T.unroll(NR // L):
                                rows[mi * R + i, T.ramp(w * L, 1, L)] = row_vector(acc, mi, i, w)
                    store_tile(rows, Out, mult, M, m0, n0)

    @T.macro
    def run(A, Wp, bias, mult, Out, M, loop):
        if R > 1:
            MP = T.meta_var((M + MR - 1) // MR * (MR // R))  # R-row groups of whole row blocks
            A_w = T.alloc_buffer((MP, KG * R), isa.a_dtype)
            copy_row_groups(A, A_w, M, MP, loop)
            tiles(A_w, Wp, bias, mult, Out, M, loop)
        elif copy_a:
            A_w = T.alloc_buffer((M, KG), isa.a_dtype)
            widen_a(A, A_w, M, loop)
            tiles(A_w, Wp, bias, mult, Out, M, loop)
        else:
            tiles(A, Wp, bias, mult, Out, M, loop)

    @T.prim_func
    def gemm(a: T.handle, Wp: T.Buffer((NO, KW, NR * R), "int32"), bias: T.Buffer((NP,), "int32"),
             mult: T.Buffer((NP,), "int32"), out: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        M = T.int32()
        A = T.match_buffer(a, (M, k), "uint8")
        Out = T.match_buffer(out, (M, n), out_dtype)
        if loop is not None:
            run(A, Wp, bias, mult, Out, M, loop)
        elif is_small(M, n, k):
            run(A, Wp, bias, mult, Out, M, T.serial)
        else:
            run(A, Wp, bias, mult, Out, M, T.parallel)

    return gemm


# ---------------------------------------------------------------- build + run
class GemmKernel:
    """A compiled GEMM with its packed constants; call it with uint8 [M, K] activations."""

    def __init__(self, executable, isa: Isa, tiling: Tiling, n: int, k: int, out_dtype: str, consts: list,
                 weights: WeightFormat = INT8_WEIGHTS):
        self.executable, self.isa, self.tiling, self.weights = executable, isa, tiling, weights
        self.n, self.k, self.out_dtype = n, k, out_dtype
        self._func = executable["main"]
        self._consts = consts  # tvm tensors: packed weight, bias, mult
        # A kernel built for another CPU (e.g. AVX512-VNNI on an AVX2 host) can be exported, not run here.
        self.runs_on_host = host_supports(isa)

    def run(self, a, out) -> None:
        """Write into a preallocated `out`; `a` and `out` may be torch tensors (DLPack) or tvm tensors."""
        if not self.runs_on_host:
            raise RuntimeError(f"this CPU lacks {', '.join(self.isa.features)}: "
                               f"the {self.isa.name} kernel cannot run here")
        self._func(a, *self._consts, out)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        if a.dtype != torch.uint8 or a.dim() != 2 or a.shape[1] != self.k:
            raise ValueError(f"expected uint8 [M, {self.k}], got {a.dtype} {tuple(a.shape)}")
        out = torch.empty(a.shape[0], self.n, dtype=getattr(torch, self.out_dtype))
        self.run(a.contiguous(), out)
        return out

    def assembly(self) -> str:
        return self.executable.mod.inspect_source("asm")


def build_gemm(
    m: int | None,
    weight,
    bias,
    mult=None,
    requant: Requant | None = None,
    target: dict | None = None,
    tiling: Tiling | None = None,
    isa: Isa | None = None,
    weights: WeightFormat = INT8_WEIGHTS,
) -> GemmKernel:
    """Compile `out = requant(A @ weight.T + bias)` (or the int32 accumulator when requant is None).

    m: the expected number of rows (picks the tile height), or None; the kernel accepts any M either
       way (M is a free variable of the TIR function).
    weight: int8 [N, K]; bias, mult: int32 [N] (numpy or torch); target: a TVM target dict, default the
    host CPU, whose features pick the kernel (AVX512-VNNI, else AVX2) unless `isa` is given.
    weights: how the kernel stores and reads the weights (INT4_WEIGHTS: values in [-8, 7], two per byte).
    """
    weight = weight.numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    n, k = weight.shape
    target = tvm.target.Target(target or host_target())
    isa = isa or isa_for(target)
    tiling = tiling or choose_tiling(isa, m, n, k)
    if (requant is None) != (mult is None):
        raise ValueError("mult and requant go together")
    np_ = ceil_div(n, tiling.nr) * tiling.nr

    func = gemm_prim_func(n, k, requant, isa, tiling, weights)
    executable = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    to_dev = lambda x: tvm.runtime.tensor(x, dev)
    consts = [
        to_dev(weights.pack(weight, isa, tiling.nr)),
        to_dev(pad_channels(_as_numpy(bias), np_)),
        to_dev(pad_channels(_as_numpy(mult) if mult is not None else np.zeros(n, np.int32), np_)),
    ]
    return GemmKernel(executable, isa, tiling, n, k, requant.out_dtype if requant else "int32", consts, weights)


def _as_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------- reference
def reference_gemm(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, mult=None,
                   requant: Requant | None = None) -> torch.Tensor:
    """The same formula in plain torch int64: the ground truth the kernel must match bit for bit."""
    acc = a.to(torch.int64) @ w.to(torch.int64).T + bias.to(torch.int64)
    acc = acc.to(torch.int32).to(torch.int64)  # the accumulator is int32 (wraps), as in the kernel
    if requant is None:
        return acc.to(torch.int32)
    y = (acc * mult.to(torch.int64) + (1 << (requant.shift - 1))) >> requant.shift
    return (y + requant.out_zp).clamp(requant.qmin, requant.qmax).to(getattr(torch, requant.out_dtype))
