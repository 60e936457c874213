"""`qc.matmul_int` (int8 activation x activation, batched: attention's Q.K^T and P.V) on the dot-product
instruction of the target's GEMM Isa (isa.isa_for: sdot on "arm", vpdpbusd on AVX512-VNNI x86),
with the requantize that follows (one multiplier, one constant shift) applied on the register tile.

Both operands are run-time activations, so nothing is packed at build time:
- B [.., K, N] is packed on every call by a TE kernel (pack_b in matmul_lowering.py, into which FuseOps folds the transposes
  that produce B) into the layout the dot product reads: int8 [BO, N/NR, K/4, NR * 4], i.e. for every
  panel of NR output columns and every group of 4 k-values, NR 32-bit words each holding the 4 k-values
  of one column. uint8 values are flipped to int8 (b ^ 0x80 = b - 128), K and N are padded with zeros.
- A [.., M, K] is read in place (one broadcast 32-bit word = 4 k-values per dot product) when it already
  has the byte format the instruction reads without a per-word flip (int8 for sdot, uint8 for vpdpbusd),
  K is a static multiple of 4 and A's batch dims are the output's; otherwise a TE copy (pad_a, matmul_lowering.py) converts
  it (a -/+ 128, zero point likewise), pads K to a multiple of 4 with the zero point and broadcasts the
  batch dims. The copy costs one pass over A (and absorbs the transpose that produces Q); a flip in the
  K loop cost an eor per A word and tile row.
- On aarch64 the K loop reads 16 bytes of an A row at once (4 k-groups) and uses sdot's by-element form
  `sdot acc.4s, b.16b, a.4b[j]` (_sdot_by_element), so an A word costs neither a broadcast load nor a dup;
  the tile is picked among those whose loop (accumulators + 4 k-groups of B vectors) fits 32 registers.
  On x86 each A word is one broadcast (vpbroadcastd / an embedded {1to16}) as in the GEMM kernel.
- BO is the output's batch dims flattened; operands broadcast over batch dims as torch.matmul does.
- The accumulator tile is MR x NR as in gemm_kernel (its cost model picks it); jobs (batch, row block,
  column panel) run in parallel. Executed aarch64 instructions for a MiniLM-shaped attention block
  (12 heads, head dim 32, seq 128; emulated device): Q.K^T kernel 4.28M -> 1.19M, P.V with its
  requantize 5.24M (+0.13M separate requantize) -> 0.90M, packing copies included the matmul path
  9.80M -> 2.52M.

Exact zero points. The dot instruction computes sum_k A_eff * B_eff with A_eff = a - oa and B_eff = b - ob
(oa, ob: what the instruction's signedness makes of the stored bytes; see MatmulSpec.offsets). With
da = oa - za and db = ob - zb:

    sum_k (a - za)(b - zb) = sum_k A_eff B_eff  +  da * sum_k B_eff[k, n]  +  db * sum_k (a[m, k] - za)

The two correction vectors are computed in a pre-pass inside the kernel: the column sums of the packed B
with the same dot product against a word of ones (the padding is zero, so the padded sum is exact), the
row sums with a plain loop over A's (padded) row, whose padding is za and so adds nothing. The
accumulators start from colterm[n] + rowterm[m]; the int32 accumulator wraps like any int32 GEMM, so the
result is exact whenever the true value fits int32, as the reference's does.

The kernel is TIR written directly (as gemm_kernel's: tensorize segfaults in this venv), with every size
symbolic, so one kernel serves dynamic batch and sequence lengths.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import tirx as tir
from tvm.script import tirx as T

from .gemm_kernel import Requant, requantize_lanes
from .isa import Isa, isa_for
from .parallelism import is_small, static_loop
from .tiling import (
    Tiling,
    candidate_tiles,
    check_tiling,
    choose_tiling,
    preference,
    tile_cycles,
)

__all__ = ["supported_isa", "matmul_prim_func", "matmul_tiling", "MatmulSpec", "by_element"]


def supported_isa(target) -> Isa | None:
    """The target's best GEMM Isa whose dot product reads 4 bytes per 32-bit lane from a uint8 A word
    (NEON sdot, also on i8mm CPUs; AVX512-VNNI, its emulation); None for AVX2 (int16 pairs) and targets
    without one."""
    if target is None:
        return None
    return isa_for(target, lambda isa: isa.group == 4 and isa.rows == 1 and isa.a_dtype == "uint8")


# ---------------------------------------------------------------- the kernel
@dataclass(frozen=True)
class MatmulSpec:
    """What one kernel is specialised for (everything but the sizes, which stay symbolic)."""

    isa: Isa
    tiling: Tiling
    a_dtype: str  # "uint8" / "int8"
    b_dtype: str
    a_zp: int
    b_zp: int
    requant: Requant | None = None  # None: int32 out
    mult: int = 0  # the requantize multiplier (one for the whole tensor)
    # aarch64: the K loop loads 16 bytes (4 k-groups) of each A row and multiplies by lane with sdot's
    # by-element form (_sdot_by_element); A is int8 and read without a flip.
    by_element: bool = False

    def offsets(self) -> tuple[int, int, bool]:
        """(oa, ob, flip_a): the dot product multiplies A_eff = a - oa by B_eff = b - ob. isa.dot reads a
        byte u of the A word as u - isa.a_offset; int8 A words are flipped first (^ 0x80: u = a + 128).
        pack_b stores uint8 B flipped (b - 128), int8 B as is."""
        if self.by_element:
            if self.a_dtype != "int8":
                raise ValueError("the by-element kernel reads int8 A")
            return 0, 128 if self.b_dtype == "uint8" else 0, False
        flip_a = self.a_dtype == "int8"
        oa = self.isa.a_offset - (128 if flip_a else 0)
        ob = 128 if self.b_dtype == "uint8" else 0
        return oa, ob, flip_a


def _word(byte: int) -> int:
    """The int32 whose four bytes are `byte`."""
    return int(np.array([byte * 0x01010101], np.uint32).view(np.int32)[0])


def _sdot_by_element(acc, a_word, w_words):
    """sdot with the broadcast A word as the *second* operand: when that word is a lane of a loaded vector,
    LLVM selects the by-element form `sdot v.4s, b.16b, a.4b[lane]` (no dup, no broadcast load). Both
    operands are signed bytes (int8 A, pack_b's B). Same call_llvm_pure_intrin as isa._dot_sdot."""
    as_bytes = lambda x: tvm.tirx.reinterpret("int8x16", x)
    return tvm.tirx.call_llvm_pure_intrin(
        "int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, as_bytes(w_words), as_bytes(tvm.tirx.Broadcast(a_word, 4)))


def by_element(isa: Isa) -> bool:
    """Whether the kernel uses sdot's by-element form (aarch64 with the dot product)."""
    return isa.arch == "aarch64" and isa.lanes == 4 and isa.group == 4


def _by_element_registers(isa: Isa, t: Tiling) -> int:
    """Vector registers of the by-element K loop: accumulators, 4 k-groups of weight vectors, an A row."""
    nv = t.nr // isa.lanes
    return t.mr * nv + 4 * nv + 1


def matmul_prim_func(spec: MatmulSpec, sizes: tuple = ()) -> tvm.tirx.PrimFunc:
    """main(A: [BO, M, KA], Bp: int8 [BO, NO, KW, NR * 4], Out: [BO, M, N]) with every size free;
    KA == 4 * KW (A padded with a_zp), NO == ceil(N / NR). `sizes`: (BO, M, N, K) as the model calls it,
    so that the loops are built serial or parallel without a run-time branch where all are known."""
    isa, tiling = spec.isa, spec.tiling
    check_tiling(isa, tiling)
    L, G, MR, NR = isa.lanes, isa.group, tiling.mr, tiling.nr
    NV = NR // L
    oa, ob, flip_a = spec.offsets()
    da, db = oa - spec.a_zp, ob - spec.b_zp
    rq = spec.requant
    out_dtype = rq.out_dtype if rq else "int32"
    dot = isa.dot
    flip = T.int32(_word(0x80))
    ones = T.int32(_word(1 + isa.a_offset))  # read by isa.dot as four A_eff = 1
    mult = tvm.tirx.Broadcast(T.int32(spec.mult), L)
    loop = static_loop(*sizes) if sizes else None

    BO, M, KA, N, NO, KW = (tir.Var(name, "int32") for name in ("BO", "M", "KA", "N", "NO", "KW"))
    rows_shape = (BO, M) if db else (1, 1)
    cols_shape = (BO, NO * NR) if da else (1, 1)

    def vec(i):
        return T.ramp(i, 1, L)

    @T.macro
    def row_terms(A, rows, loop):
        # rows[bo, m] = db * sum_k (a[bo, m, k] - za): the padding is za.
        for bm in loop(BO * M):
            s = T.alloc_buffer((1,), "int32")
            s[0] = 0
            for k in range(KA):
                s[0] = s[0] + T.Cast("int32", A[bm // M, bm % M, k])
            rows[bm // M, bm % M] = (s[0] - KA * spec.a_zp) * db

    @T.macro
    def col_terms(Bp, cols, loop):
        # cols[bo, n] = da * sum_k B_eff[k, n], with the same dot product against A_eff = 1.
        for bp in loop(BO * NO):
            c = T.alloc_buffer((NR,), "int32")
            for v in T.unroll(NV):
                c[vec(v * L)] = T.Broadcast(T.int32(0), L)
            for kw in range(KW):
                for v in T.unroll(NV):
                    c[vec(v * L)] = dot(c[vec(v * L)], ones, T.reinterpret(
                        f"int32x{L}", Bp[bp // NO, bp % NO, kw, T.ramp(v * L * G, 1, L * G)]))
            for v in T.unroll(NV):
                cols[bp // NO, T.ramp(bp % NO * NR + v * L, 1, L)] = c[vec(v * L)] * T.Broadcast(T.int32(da), L)

    @T.macro
    def store(acc, Out, bo, m, n0, mi):
        if n0 + NR <= N:
            for v in T.unroll(NV):
                if rq is not None:
                    Out[bo, m, T.ramp(n0 + v * L, 1, L)] = requantize_lanes(acc[mi, vec(v * L)], mult, L, rq)
                else:
                    Out[bo, m, T.ramp(n0 + v * L, 1, L)] = acc[mi, vec(v * L)]
        else:  # ragged last panel: scalar stores of the columns that exist
            for ni in range(NR):
                if n0 + ni < N:
                    if rq is not None:
                        Out[bo, m, n0 + ni] = requantize_lanes(acc[mi, ni], T.int32(spec.mult), 1, rq)
                    else:
                        Out[bo, m, n0 + ni] = acc[mi, ni]

    @T.macro
    def tiles(A, Bp, Out, rows, cols, loop):
        MO = T.meta_var((M + MR - 1) // MR)
        for job in loop(BO * MO * NO):
            bo = T.meta_var(job // (MO * NO))
            m0 = T.meta_var(job % (MO * NO) // NO * MR)
            po = T.meta_var(job % NO)
            n0 = T.meta_var(po * NR)
            acc = T.alloc_buffer((MR, NR), "int32")
            for mi in T.unroll(MR):
                for v in T.unroll(NV):
                    if da != 0 and db != 0:
                        acc[mi, vec(v * L)] = cols[bo, T.ramp(n0 + v * L, 1, L)] + T.Broadcast(
                            rows[bo, T.min(m0 + mi, M - 1)], L)
                    elif da != 0:
                        acc[mi, vec(v * L)] = cols[bo, T.ramp(n0 + v * L, 1, L)]
                    elif db != 0:
                        acc[mi, vec(v * L)] = T.Broadcast(rows[bo, T.min(m0 + mi, M - 1)], L)
                    else:
                        acc[mi, vec(v * L)] = T.Broadcast(T.int32(0), L)
            if spec.by_element:
                for kq in range(KW // 4):
                    for mi in T.unroll(MR):
                        # One 16-byte load per row: its words for k-groups 4kq..4kq+3, used lane by lane.
                        a_row = T.meta_var(T.reinterpret("int32x4", A[bo, T.min(m0 + mi, M - 1), T.ramp(kq * 16, 1, 16)]))
                        for j in T.unroll(4):
                            for v in T.unroll(NV):
                                acc[mi, vec(v * L)] = _sdot_by_element(acc[mi, vec(v * L)], T.Shuffle([a_row], [j]), T.reinterpret(
                                    f"int32x{L}", Bp[bo, po, kq * 4 + j, T.ramp(v * L * G, 1, L * G)]))
                for kw in range(KW // 4 * 4, KW):  # the last k-groups, one word at a time
                    for mi in T.unroll(MR):
                        a_word = T.meta_var(T.reinterpret("int32", A[bo, T.min(m0 + mi, M - 1), T.ramp(kw * G, 1, G)]))
                        for v in T.unroll(NV):
                            acc[mi, vec(v * L)] = _sdot_by_element(acc[mi, vec(v * L)], a_word, T.reinterpret(
                                f"int32x{L}", Bp[bo, po, kw, T.ramp(v * L * G, 1, L * G)]))
            else:
                for kw in range(KW):
                    for mi in T.unroll(MR):
                        # Rows past M (last row block) recompute row M-1; their results are never stored.
                        a_word = T.meta_var(T.reinterpret("int32", A[bo, T.min(m0 + mi, M - 1), T.ramp(kw * G, 1, G)]))
                        for v in T.unroll(NV):
                            if flip_a:
                                acc[mi, vec(v * L)] = dot(acc[mi, vec(v * L)], a_word ^ flip, T.reinterpret(
                                    f"int32x{L}", Bp[bo, po, kw, T.ramp(v * L * G, 1, L * G)]))
                            else:
                                acc[mi, vec(v * L)] = dot(acc[mi, vec(v * L)], a_word, T.reinterpret(
                                    f"int32x{L}", Bp[bo, po, kw, T.ramp(v * L * G, 1, L * G)]))
            if m0 + MR <= M:
                for mi in T.unroll(MR):
                    store(acc, Out, bo, m0 + mi, n0, mi)
            else:
                for mi in T.unroll(MR):
                    if m0 + mi < M:
                        store(acc, Out, bo, m0 + mi, n0, mi)

    @T.macro
    def run(A, Bp, Out, rows, cols, loop):
        if db != 0:
            row_terms(A, rows, loop)
        if da != 0:
            col_terms(Bp, cols, loop)
        tiles(A, Bp, Out, rows, cols, loop)

    @T.prim_func
    def matmul(a: T.handle, bp: T.handle, out: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        A = T.match_buffer(a, (BO, M, KA), spec.a_dtype)
        Bp = T.match_buffer(bp, (BO, NO, KW, NR * G), "int8")
        Out = T.match_buffer(out, (BO, M, N), out_dtype)
        rows = T.alloc_buffer(rows_shape, "int32")
        cols = T.alloc_buffer(cols_shape, "int32")
        if loop is not None:
            run(A, Bp, Out, rows, cols, loop)
        elif is_small(BO, M, N, KA):
            run(A, Bp, Out, rows, cols, T.serial)
        else:
            run(A, Bp, Out, rows, cols, T.parallel)

    return matmul


def matmul_tiling(isa: Isa, m: int | None, n: int | None, k: int | None) -> Tiling:
    """The GEMM cost model's tile (unknown sizes taken as large); for the by-element kernel, among the tiles
    whose K loop fits the registers (it keeps 4 k-groups of weight vectors live)."""
    m, n, k = (d or 4096 for d in (m, n, k))
    if not by_element(isa):
        return choose_tiling(isa, m, n, k)
    threads = os.cpu_count() or 1
    fits = [t for t in candidate_tiles(isa) if _by_element_registers(isa, t) <= isa.registers and t.mr <= m]
    cycles = {t: tile_cycles(isa, t.mr, t.nr, m, n, k, threads) for t in fits}
    fastest = min(cycles.values())
    return max((t for t, c in cycles.items() if c <= 1.05 * fastest), key=lambda t: preference(isa, t))
