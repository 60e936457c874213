"""The CPU ISAs the hand-written integer kernels are written for, and which one a target gets.

Each `Isa` is what differs between the GEMM kernel's instruction sets (gemm_kernel.py explains the choice
of each): AVX2 (vpmaddwd on int16 pairs), AVX512-VNNI (vpdpbusd), aarch64 NEON with the dot product (sdot)
and with i8mm (smmla). `isa_for` picks the best one the target's CPU features allow, asking LLVM about
the target's own architecture only; `host_target` is this machine's CPU, detected at run time.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable

import tvm
from tvm.target import codegen

__all__ = ["Isa", "AVX2", "AVX512_VNNI", "AVX512_VNNI_EMULATED", "NEON_DOTPROD", "NEON_I8MM", "GEMM_ISAS",
           "sdot", "host_target", "host_supports", "isa_for"]


@dataclass(frozen=True)
class Isa:
    """What differs between the AVX2 and the AVX512-VNNI kernels."""

    name: str
    features: tuple[str, ...]  # LLVM CPU features the kernel needs
    lanes: int  # int32 accumulators per vector register
    group: int  # k-values per packed word (and per dot-product lane)
    a_dtype: str  # element type the inner loop reads A as
    registers: int
    latency: int  # cycles between two accumulates into one register (bounds a K loop with few accumulators)
    dot: Callable  # (acc int32xL, a_word int32, w_words int32xL) -> int32xL
    # The dot product reads A as (a - a_offset): sdot multiplies signed bytes, so uint8 activations are
    # flipped to int8 (a ^ 0x80) and the lowering adds a_offset * sum(w) back through the bias.
    a_offset: int = 0
    arch: str = "x86_64"  # the first part of the LLVM target triple the ISA belongs to
    # Rows of A one dot product reads. 1: the A operand is one row's `group` values (broadcast) and an
    # accumulator register holds `lanes` columns of one row. 2 (smmla): the A operand holds two rows'
    # `group` values, the weight operand lanes/2 columns', and an accumulator register a 2 x lanes/2
    # block. A is then copied once per call into row pairs (and offset), and tiles have an even mr.
    rows: int = 1
    # Registers the K loop's A operand takes beside the accumulators and weights: x86 broadcasts it from
    # memory into the dot product; sdot loads, flips (XOR 0x80) and dup's each A word, and LLVM keeps
    # those apart (a 14x8 sdot tile, 28 + 2 + 1 registers, spilled 42 moves per K step; 13x8 did not).
    a_registers: int = 1

    @property
    def columns(self) -> int:
        """Output columns one accumulator register (and one weight vector) covers."""
        return self.lanes // self.rows

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
    # The LLVM 22 inside TVM 0.27 declares the byte operands as <64 x i8>; passing <16 x i32>, as TVM's
    # own VNNI_DOT_16x4_INTRIN does, fails LLVM's verifier ("Call parameter type does not match").
    as_bytes = lambda x: tvm.tirx.reinterpret("int8x64", x)
    a_bytes = as_bytes(tvm.tirx.Broadcast(a_word, 16))
    return tvm.tirx.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", acc, a_bytes, as_bytes(w_words))


def _dot_vnni_emulated(acc, a_word, w_words):
    # vpdpbusd spelled out with shifts and int32 multiplies, so that everything about the VNNI kernel
    # except that one instruction (packing, in-place A reads, 8x48 tiles, 16-lane epilogue) can be
    # checked on a CPU without AVX-512. Byte j: unsigned in the A word, signed in the weight words.
    splat = lambda v: tvm.tirx.Broadcast(tvm.tirx.const(v, "int32"), 16)
    for j in range(4):
        a_j = tvm.tirx.Broadcast((a_word >> 8 * j) & 255, 16)
        w_j = (w_words << splat(24 - 8 * j)) >> splat(24)  # sign-extend byte j
        acc = acc + a_j * w_j
    return acc


def sdot(acc, a_bytes, w_bytes):
    """aarch64 sdot: acc (int32x4) += the four s8 x s8 products of each lane's bytes (int8x16 operands)."""
    return tvm.tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, a_bytes, w_bytes)


def _dot_sdot(acc, a_word, w_words):
    # A's four bytes flipped to a - 128 as int8, broadcast to the four lanes.
    as_bytes = lambda x: tvm.tirx.reinterpret("int8x16", x)
    flipped = a_word ^ tvm.tirx.const(-0x7F7F7F80, "int32")  # 0x80808080
    return sdot(acc, as_bytes(tvm.tirx.Broadcast(flipped, 4)), as_bytes(w_words))


def _dot_smmla(acc, a_rows, w_words):
    # smmla: a 2x2 int32 tile += (two A rows of 8 s8) x (two weight columns of 8 s8)^T. The A operand is
    # int8x16 (row 2p in bytes 0-7, row 2p+1 in bytes 8-15), copied already offset to a - 128; the weight
    # vector holds column 2c's 8 values, then column 2c+1's. acc lanes: (r0,c0) (r0,c1) (r1,c0) (r1,c1).
    return tvm.tirx.call_llvm_pure_intrin(
        "int32x4", "llvm.aarch64.neon.smmla.v4i32.v16i8", acc, a_rows, tvm.tirx.reinterpret("int8x16", w_words))


AVX2 = Isa("avx2", ("avx2",), lanes=8, group=2, a_dtype="int16", registers=16,
           latency=4, dot=_dot_avx2)  # vpaddd, or a fused vpdpwssd (4-5 cycles) where LLVM may use AVX-VNNI
AVX512_VNNI = Isa("avx512-vnni", ("avx512f", "avx512bw", "avx512vnni"), lanes=16, group=4, a_dtype="uint8",
                  registers=32, latency=5, dot=_dot_vnni)
NEON_DOTPROD = Isa("neon-dotprod", ("neon", "dotprod"), lanes=4, group=4, a_dtype="uint8", registers=32,
                   latency=4, dot=_dot_sdot, a_offset=128, arch="aarch64", a_registers=3)
# Armv8.6 i8mm (Neoverse N2/V2, Cortex-A710/X2 and later): 32 MACs per smmla against sdot's 16. The GEMM
# itself needs no sdot; "dotprod" is required so that the depthwise kernel (sdot) may run on such targets
# (every CPU with i8mm has it: mandatory from Armv8.4, i8mm from Armv8.6).
NEON_I8MM = Isa("neon-i8mm", ("neon", "dotprod", "i8mm"), lanes=4, group=8, a_dtype="int8", registers=32,
                latency=4, dot=_dot_smmla, a_offset=128, arch="aarch64", rows=2)
# Same kernel as AVX512_VNNI with the dot product in plain int32 arithmetic: runs on AVX2, for testing.
AVX512_VNNI_EMULATED = dataclasses.replace(AVX512_VNNI, name="avx512-vnni-emulated", features=("avx2",),
                                           dot=_dot_vnni_emulated)


def host_target() -> tvm.target.Target:
    """The host CPU as a TVM target, e.g. {"kind": "llvm", "mcpu": "znver3", "num-cores": 2}: detected, never
    hard-coded.

    The kernels run on TVM's thread pool, which on x86 defaults to *half* the logical CPUs (it assumes
    hyper-threading; on a 2-vCPU VM that is one thread): set TVM_NUM_THREADS before the first call."""
    return tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1})


GEMM_ISAS = (AVX512_VNNI, AVX2, NEON_I8MM, NEON_DOTPROD)  # best first


def isa_for(target, usable: Callable[[Isa], bool] = lambda isa: True) -> Isa | None:
    """The best exact GEMM kernel the target's CPU features allow, among those `usable` accepts (a kernel
    written for some operand formats only); None: none, the op stays generic TE."""
    target = tvm.target.Target(target)
    # LLVM's feature query answers for the target's architecture: ask only about that architecture's ISAs.
    arch = str(target.attrs.get("mtriple", "")).split("-")[0] or "x86_64"
    for isa in GEMM_ISAS:
        if isa.arch == arch and usable(isa) and codegen.llvm_cpu_has_features(list(isa.features), target):
            return isa
    return None


def host_supports(isa: Isa) -> bool:
    return bool(codegen.llvm_cpu_has_features(list(isa.features), host_target()))
