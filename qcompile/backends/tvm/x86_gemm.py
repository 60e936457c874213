"""Exact uint8 x int8 GEMM with a fused requantize epilogue: a hand-scheduled TVM TIR kernel for x86.

Semantics, bit-exact with `qcompile.quant.ops.linear_int` (zero point folded into the bias) followed by
`requantize_fixed`:

    acc[m, n] = sum_k int32(A[m, k]) * int32(W[n, k]) + bias[n]                          (int32)
    y[m, n]   = clamp(((acc * mult[n] + 2^(shift-1)) >> shift) + out_zp, qmin, qmax)    (int64 math)

A is uint8 [M, K] with M free at run time; W is int8 [N, K] and is packed once, at build time.
The int32 accumulator wraps like every int32 GEMM: exact while |acc| < 2^31 (always for K <= 65793).

Instruction choice (why not the usual vpmaddubsw): vpmaddubsw adds two u8*s8 products into a
*saturating* int16, and 2 * 255 * 127 = 64770 > 32767, so it is not exact for arbitrary data.
- AVX2: A is widened to int16 once per call (an O(M*K) pass), and the inner product is vpmaddwd
  (two s16*s16 products summed into s32, exact) + vpaddd. On Zen 3 vpmaddwd issues twice per cycle,
  i.e. 32 MACs/cycle/core, the same rate as the vpmaddubsw + vpmaddwd(1) + vpaddd sequence fbgemm uses.
- AVX512-VNNI: vpdpbusd (four u8*s8 products summed into s32 without intermediate saturation) is exact
  and reads A as it is. This path is selected from the target's CPU features; it compiles, but it was
  never run on the machine this was written on (AMD Zen 3, no AVX-512).

Kernel shape (GotoBLAS-style register blocking, written out as TIR rather than derived with
`Schedule.tensorize`, because with apache-tvm-ffi 0.1.15 `tensorize` crashes: it deep-copies the
intrinsic through the JSON serializer, and `tvm.ir.save_json` of any TIR node segfaults there):
- W is packed as int32 "words" [N/NR, K/G, NR]: each word holds the G (2 for int16, 4 for int8) k-values
  of one output column, so one vector load gives the operand of one vpmaddwd / vpdpbusd.
- Each (MR x NR) output tile keeps MR * NR/L int32 accumulator vectors in registers over the whole K loop;
  per k-group it loads NR/L weight vectors, broadcasts one A word per row, and issues MR * NR/L dot ops.
- Tiles run in parallel; the tile order visits a block of weight panels for each row block, so the A rows
  of the tile stay in L1 and the weight block stays in L2.
- The accumulators are initialised with the bias, and the requantize epilogue runs on the register tile
  right after its K loop, so the int32 accumulator matrix is never written to memory.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import tvm
from tvm.script import tirx as T
from tvm.target import codegen

__all__ = [
    "Requant", "Tiling", "GemmKernel", "build_gemm", "gemm_prim_func", "pack_weight", "pad_channels",
    "host_target", "isa_for", "reference_gemm",
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


@dataclass(frozen=True)
class Tiling:
    """Register tile (mr rows x nr columns) and how many weight panels one row block visits in turn."""

    mr: int
    nr: int
    panels: int = 8


@dataclass(frozen=True)
class Isa:
    """What differs between the AVX2 and the AVX512-VNNI kernels."""

    name: str
    lanes: int  # int32 accumulators per vector register
    group: int  # k-values per packed word (and per dot-product lane)
    a_dtype: str  # element type the inner loop reads A as
    registers: int
    dot: Callable  # (acc int32xL, a_word int32, w_words int32xL) -> int32xL

    def default_tiling(self) -> Tiling:
        # Accumulators + weight vectors + one broadcast must fit the register file.
        return Tiling(mr=6, nr=16) if self.lanes == 8 else Tiling(mr=8, nr=48)


def _dot_avx2(acc, a_word, w_words):
    # vpmaddwd: the broadcast A word is two int16 (a[k], a[k+1]); each weight word is (w[k], w[k+1]).
    pairs = tvm.tirx.call_llvm_pure_intrin(
        "int32x8", "llvm.x86.avx2.pmadd.wd",
        tvm.tirx.reinterpret("int16x16", tvm.tirx.Broadcast(a_word, 8)),
        tvm.tirx.reinterpret("int16x16", w_words),
    )
    return acc + pairs


def _dot_vnni(acc, a_word, w_words):
    # vpdpbusd: acc += sum of four u8 (broadcast A word) * s8 (weight word) products, no saturation.
    return tvm.tirx.call_llvm_pure_intrin(
        "int32x16", "llvm.x86.avx512.vpdpbusd.512", acc, tvm.tirx.Broadcast(a_word, 16), w_words
    )


AVX2 = Isa("avx2", lanes=8, group=2, a_dtype="int16", registers=16, dot=_dot_avx2)
AVX512_VNNI = Isa("avx512-vnni", lanes=16, group=4, a_dtype="uint8", registers=32, dot=_dot_vnni)


def host_target() -> dict:
    return {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}


def isa_for(target) -> Isa:
    """The best exact kernel the target's CPU features allow."""
    target = tvm.target.Target(target)
    if codegen.llvm_cpu_has_features(["avx512f", "avx512bw", "avx512vnni"], target):
        return AVX512_VNNI
    if codegen.llvm_cpu_has_features(["avx2"], target):
        return AVX2
    raise ValueError(f"target {target} has neither AVX2 nor AVX512-VNNI")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_tiling(isa: Isa, tiling: Tiling) -> None:
    if tiling.nr % isa.lanes:
        raise ValueError(f"nr={tiling.nr} must be a multiple of {isa.lanes} lanes")
    # Accumulators + one broadcast A word + one weight vector (the others can be memory operands).
    if tiling.mr * (tiling.nr // isa.lanes) + 2 > isa.registers:
        raise ValueError(f"tile {tiling.mr}x{tiling.nr} needs more than {isa.registers} vector registers")


# ---------------------------------------------------------------- packing (build time, numpy)
def pack_weight(w: np.ndarray, isa: Isa, nr: int) -> np.ndarray:
    """int8 [N, K] -> int32 words [ceil(N/nr), ceil(K/group), nr], zero padded.

    Word (p, g, j) holds W[p*nr + j, g*group : (g+1)*group] as int16 (AVX2) or int8 (VNNI) values, lowest
    k in the lowest bytes, which is the operand order of vpmaddwd / vpdpbusd.
    """
    w = np.asarray(w)
    if w.dtype != np.int8 or w.ndim != 2:
        raise TypeError(f"weight must be int8 [N, K], got {w.dtype} {w.shape}")
    n, k = w.shape
    panels, groups = _ceil_div(n, nr), _ceil_div(k, isa.group)
    elem = np.int16 if isa.group == 2 else np.int8
    padded = np.zeros((panels * nr, groups * isa.group), elem)
    padded[:n, :k] = w
    words = padded.reshape(panels, nr, groups, isa.group).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(words).view(np.int32).reshape(panels, groups, nr)


def pad_channels(v, n_padded: int) -> np.ndarray:
    """Per-channel int32 vector padded with zeros to the packed width (the kernel reads full tiles)."""
    v = np.asarray(v)
    if v.ndim != 1 or not np.all((v >= -(2**31)) & (v < 2**31)):
        raise ValueError("per-channel values must be a 1-D int32 range vector")
    out = np.zeros(n_padded, np.int32)
    out[: v.shape[0]] = v
    return out


# ---------------------------------------------------------------- the TIR kernel
def _tile_order(m_blocks, panels: int, group: int):
    """Tile index -> (row block, panel): a row block visits `group` panels before moving on.

    The A rows of a row block then stay in L1 while the group of weight panels stays in L2; with
    `panels % group == 0` the groups tile the panels exactly."""

    def order(t):
        per_group = m_blocks * group
        g, r = t // per_group, t % per_group
        return r // group, g * group + r % group

    return order


def _panel_group(panels: int, wanted: int) -> int:
    return max(d for d in range(1, min(panels, wanted) + 1) if panels % d == 0)


def gemm_prim_func(n: int, k: int, requant: Requant | None, isa: Isa, tiling: Tiling) -> tvm.tirx.PrimFunc:
    """main(A: uint8 [M, k], Wp: packed words, bias: int32, [mult: int32,] Out) with M free.

    Out is `requant.out_dtype` [M, n], or the int32 accumulator when `requant` is None.
    """
    _check_tiling(isa, tiling)
    L, G, MR, NR = isa.lanes, isa.group, tiling.mr, tiling.nr
    NV = NR // L
    NO, KW = _ceil_div(n, NR), _ceil_div(k, G)
    NP, KG = NO * NR, KW * G
    full_n = n % NR == 0  # no ragged last panel: no column guard is needed in the epilogue
    # A is read as G-element words; it needs a padded (and, on AVX2, widened) copy unless it can be
    # read in place: VNNI with k % 4 == 0.
    copy_a = isa.a_dtype != "uint8" or k % G != 0
    group = _panel_group(NO, tiling.panels)
    dot = isa.dot
    out_dtype = requant.out_dtype if requant else "int32"
    if requant:
        rnd, shift = T.int64(1 << (requant.shift - 1)), T.int64(requant.shift)
        zp, lo, hi = T.int64(requant.out_zp), T.int64(requant.qmin), T.int64(requant.qmax)

    def requantize(acc, mult, lanes):
        """int32 accumulators (`lanes` of them) -> clamped output, in int64 like requantize_fixed."""
        wide = "int64x%d" % lanes if lanes > 1 else "int64"
        bc = (lambda c: tvm.tirx.Broadcast(c, lanes)) if lanes > 1 else (lambda c: c)
        y = (T.Cast(wide, acc) * T.Cast(wide, mult) + bc(rnd)) >> bc(shift)
        y = T.max(T.min(y + bc(zp), bc(hi)), bc(lo))
        return T.Cast(out_dtype if lanes == 1 else "%sx%d" % (out_dtype, lanes), y)

    @T.macro
    def widen_a(A, A_w, M):
        # One pass over A (parallel over rows) so that the hot loop can broadcast ready-made words.
        for m in T.parallel(M):
            for kk in range(k):
                A_w[m, kk] = T.Cast(isa.a_dtype, A[m, kk])
            for kk in range(k, KG):
                A_w[m, kk] = T.Cast(isa.a_dtype, 0)

    @T.macro
    def store_tile(acc, Out, mult, M, m0, n0):
        for mi in T.unroll(MR):
            if m0 + mi < M:
                if full_n or n0 + NR <= n:
                    for v in T.unroll(NV):
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
    def tiles(A_w, Wp, bias, mult, Out, M):
        MO = (M + MR - 1) // MR
        for t in T.parallel(MO * NO):
            mo, po = T.meta_var(_tile_order(MO, NO, group)(t))
            m0, n0 = T.meta_var((mo * MR, po * NR))
            acc = T.alloc_buffer((MR, NR), "int32", scope="local")  # lives in vector registers
            for mi in T.unroll(MR):
                for v in T.unroll(NV):
                    acc[mi, T.ramp(v * L, 1, L)] = bias[T.ramp(n0 + v * L, 1, L)]
            for kw in range(KW):
                for mi in T.unroll(MR):
                    # Rows past M (last row block) recompute row M-1; their results are never stored.
                    a_word = T.meta_var(T.reinterpret(
                        "int32", A_w[T.min(m0 + mi, M - 1), T.ramp(kw * G, 1, G)]))
                    for v in T.unroll(NV):
                        acc[mi, T.ramp(v * L, 1, L)] = dot(
                            acc[mi, T.ramp(v * L, 1, L)], a_word, Wp[po, kw, T.ramp(v * L, 1, L)])
            store_tile(acc, Out, mult, M, m0, n0)

    @T.prim_func
    def gemm(a: T.handle, Wp: T.Buffer((NO, KW, NR), "int32"), bias: T.Buffer((NP,), "int32"),
             mult: T.Buffer((NP,), "int32"), out: T.handle):
        T.func_attr({"global_symbol": "main", "tirx.noalias": True})
        M = T.int32()
        A = T.match_buffer(a, (M, k), "uint8")
        Out = T.match_buffer(out, (M, n), out_dtype)
        if copy_a:
            A_w = T.alloc_buffer((M, KG), isa.a_dtype)
            widen_a(A, A_w, M)
            tiles(A_w, Wp, bias, mult, Out, M)
        else:
            tiles(A, Wp, bias, mult, Out, M)

    return gemm


# ---------------------------------------------------------------- build + run
class GemmKernel:
    """A compiled GEMM with its packed constants; call it with uint8 [M, K] activations."""

    def __init__(self, executable, isa: Isa, tiling: Tiling, n: int, k: int, out_dtype: str, consts: list):
        self.executable, self.isa, self.tiling = executable, isa, tiling
        self.n, self.k, self.out_dtype = n, k, out_dtype
        self._func = executable["main"]
        self._consts = consts  # tvm tensors: packed weight, bias, mult

    def run(self, a, out) -> None:
        """Write into a preallocated `out`; `a` and `out` may be torch tensors (DLPack) or tvm tensors."""
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
) -> GemmKernel:
    """Compile `out = requant(A @ weight.T + bias)` (or the int32 accumulator when requant is None).

    m: the expected number of rows, or None; the kernel accepts any M either way (M is a free variable).
    weight: int8 [N, K]; bias, mult: int32 [N]; target: a TVM target dict, default the host CPU.
    """
    del m  # the tile shape does not depend on M; kept so call sites can say what they expect
    weight = weight.numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight)
    n, k = weight.shape
    target = tvm.target.Target(target or host_target())
    isa = isa_for(target)
    tiling = tiling or isa.default_tiling()
    if (requant is None) != (mult is None):
        raise ValueError("mult and requant go together")
    np_ = _ceil_div(n, tiling.nr) * tiling.nr

    func = gemm_prim_func(n, k, requant, isa, tiling)
    executable = tvm.compile(tvm.IRModule({"main": func}), target=target)
    dev = tvm.cpu()
    to_dev = lambda x: tvm.runtime.tensor(x, dev)
    consts = [
        to_dev(pack_weight(weight, isa, tiling.nr)),
        to_dev(pad_channels(_as_numpy(bias), np_)),
        to_dev(pad_channels(_as_numpy(mult) if mult is not None else np.zeros(n), np_)),
    ]
    return GemmKernel(executable, isa, tiling, n, k, requant.out_dtype if requant else "int32", consts)


def _as_numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---------------------------------------------------------------- reference
def reference_gemm(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, mult=None, requant: Requant | None = None):
    """The same formula in plain torch int64 (the ground truth the kernel must match bit for bit)."""
    acc = a.to(torch.int64) @ w.to(torch.int64).T + bias.to(torch.int64)
    acc = acc.to(torch.int32).to(torch.int64)  # the accumulator is int32, as in linear_int
    if requant is None:
        return acc.to(torch.int32)
    y = (acc * mult.to(torch.int64) + (1 << (requant.shift - 1))) >> requant.shift
    return (y + requant.out_zp).clamp(requant.qmin, requant.qmax).to(getattr(torch, requant.out_dtype))
