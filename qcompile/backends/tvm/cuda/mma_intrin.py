"""Tensor intrinsics for int8 tensor cores that TVM 0.27 lacks: uint8 activations times int8 weights.

PTX `mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32` multiplies uint8 by int8 exactly, at the rate of
the s8 x s8 form, so uint8 activations go to the tensor cores as they are stored. (The alternative, x - 128
into int8 with 128 * sum(w) added to the bias, would need the bias changed at lowering time and a flip per
loaded byte.) TVM registers ldmatrix and mma only for int8 x int8 (tvm.s_tir.tensor_intrin.cuda):
here are the same warp-level operations with each operand's own dtype, and with the multiply written as
the kernel's TE definitions write it, since tensorize matches the block's arithmetic structurally:
linear_int multiplies in int32, conv2d_nhwc in int16 (exact for 8-bit operands, |a * w| <= 32640).

Fragment layouts (which lane holds which element) are TVM's, from tensor_intrin.cuda: a 16 x 32 byte
tile is one ldmatrix.x4 (16 bytes per lane), and one 16 x 16 int32 accumulator tile is 8 values per lane.
"""
from __future__ import annotations

from typing import Callable

from tvm.s_tir import TensorIntrin
from tvm.s_tir.tensor_intrin.cuda import (
    shared_16x16_to_ldmatrix_32x8_layout,
    shared_16x32_to_ldmatrix_32x16_layout,
)
from tvm.script import tirx as T
from tvm.tirx import Cast

WARP = 32
TILE_M = TILE_N = 16  # one accumulator tile: two m16n8k32 mma
TILE_K = 32
OPERAND_BYTES = TILE_M * TILE_K // WARP  # bytes of a 16 x 32 operand tile per lane
ACC_VALUES = TILE_M * TILE_N // WARP  # int32 accumulators of a 16 x 16 tile per lane
_PTX_TYPES = {"uint8": "uint8", "int8": "int8"}
BYTE_TYPES = tuple(_PTX_TYPES)  # the operand dtypes of the m16n8k32 mma, in any combination


def fragment_of_a(m, k):
    """(lane, byte) of element (m, k) of a 16 x 32 A tile: the m16n8k32 A fragment, whose registers are
    (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31), (rows 8-15, k 16-31)."""
    return shared_16x32_to_ldmatrix_32x16_layout(m, k)


def fragment_of_b(n, k):
    """(lane, byte) of element (n, k) of a 16 x 32 B tile ([N, K], K innermost): registers (columns 0-7,
    k 0-15), (columns 0-7, k 16-31), (columns 8-15, k 0-15), (columns 8-15, k 16-31), so that bytes 0-7
    of a lane are the B fragment of the mma for columns 0-7 and bytes 8-15 that for columns 8-15."""
    return 4 * (n % 8) + (k % 16) // 4, 8 * (n // 8) + 4 * (k // 16) + k % 4


def _a_row_address(lane, stride):
    # Lanes 8q .. 8q+7 give the row addresses of matrix q of A's register order above.
    return stride * (lane % 16) + 16 * (lane // 16)


def _b_row_address(lane, stride):
    # ... and of B's register order.
    return stride * (8 * (lane // 16) + lane % 8) + 16 * ((lane % 16) // 8)


# operand -> (its fragment layout, the shared-memory offset each lane hands ldmatrix)
OPERANDS = {"A": (fragment_of_a, _a_row_address), "B": (fragment_of_b, _b_row_address)}


def fragment_of_accumulator(row, col):
    """(lane, value) of element (row, col) of a 16 x 16 accumulator tile."""
    return shared_16x16_to_ldmatrix_32x8_layout(row, col)


def _ldmatrix(operand: str, dtype: str, shared_scope: str):
    """16 x 32 bytes (K innermost: A [M, K], B [N, K], the weights' own order) from shared memory into
    one operand fragment: ldmatrix.x4, no transpose."""
    layout, row_address = OPERANDS[operand]

    @T.prim_func(s_tir=True)
    def desc(warp_handle: T.handle, shared_handle: T.handle) -> None:
        shared = T.match_buffer(shared_handle, (TILE_M, TILE_K), dtype, align=64, offset_factor=TILE_K, scope=shared_scope)
        warp = T.match_buffer(warp_handle, (WARP, OPERAND_BYTES), dtype, align=64, offset_factor=TILE_K, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:TILE_M, 0:TILE_K])
            T.writes(warp[0:WARP, 0:OPERAND_BYTES])
            for ax0, ax1 in T.grid(TILE_M, TILE_K):
                with T.sblock("shared_warp"):
                    v0, v1 = T.axis.remap("SS", [ax0, ax1])
                    lane, byte = T.meta_var(layout(v0, v1))
                    T.reads(shared[v0, v1])
                    T.writes(warp[lane, byte])
                    warp[lane, byte] = shared[v0, v1]

    @T.prim_func(s_tir=True)
    def impl(warp_handle: T.handle, shared_handle: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(shared_handle, (TILE_M, TILE_K), dtype, align=64, offset_factor=TILE_K,
                                scope=shared_scope, strides=[s0, s1])
        warp = T.match_buffer(warp_handle, (WARP, OPERAND_BYTES), dtype, align=64, offset_factor=TILE_K, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:TILE_M, 0:TILE_K])
            T.writes(warp[0:WARP, 0:OPERAND_BYTES])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(T.ptx_legacy.ldmatrix(
                    False, 4, ".b16", warp.data, warp.elem_offset + OPERAND_BYTES * tx, shared.access_ptr("r"),
                    row_address(tx, s0), dtype=dtype))

    return desc, impl


def _mma(a_dtype: str, b_dtype: str, product: Callable):
    """acc[16 x 16] += A[16 x 32] . B[16 x 32]^T as two m16n8k32 mma (columns 0-7, 8-15); `product` is
    how the block being tensorized writes one multiply (its TE definition's casts)."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, OPERAND_BYTES), a_dtype, align=64, offset_factor=TILE_K, scope="warp")
        B = T.match_buffer(b, (WARP, OPERAND_BYTES), b_dtype, align=64, offset_factor=TILE_K, scope="warp")
        C = T.match_buffer(c, (WARP, ACC_VALUES), "int32", align=64, offset_factor=TILE_N, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:ACC_VALUES], A[0:WARP, 0:OPERAND_BYTES], B[0:WARP, 0:OPERAND_BYTES])
            T.writes(C[0:WARP, 0:ACC_VALUES])
            for i, j, k in T.grid(TILE_M, TILE_N, TILE_K):
                with T.sblock("C"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    lane_c, value_c = T.meta_var(fragment_of_accumulator(vi, vj))
                    lane_a, byte_a = T.meta_var(fragment_of_a(vi, vk))
                    lane_b, byte_b = T.meta_var(fragment_of_b(vj, vk))
                    T.reads(C[lane_c, value_c], A[lane_a, byte_a], B[lane_b, byte_b])
                    T.writes(C[lane_c, value_c])
                    C[lane_c, value_c] = C[lane_c, value_c] + product(A[lane_a, byte_a], B[lane_b, byte_b])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, OPERAND_BYTES), a_dtype, align=64, offset_factor=TILE_K, scope="warp")
        B = T.match_buffer(b, (WARP, OPERAND_BYTES), b_dtype, align=64, offset_factor=TILE_K, scope="warp")
        C = T.match_buffer(c, (WARP, ACC_VALUES), "int32", align=64, offset_factor=TILE_N, scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:ACC_VALUES], A[0:WARP, 0:OPERAND_BYTES], B[0:WARP, 0:OPERAND_BYTES])
            T.writes(C[0:WARP, 0:ACC_VALUES])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for half in T.unroll(2):  # columns 0-7, then 8-15 (fragment_of_b)
                    T.evaluate(T.ptx_legacy.mma(
                        "m16n8k32", "row", "col", _PTX_TYPES[a_dtype], _PTX_TYPES[b_dtype], "int32",
                        A.data, A.elem_offset + tx * OPERAND_BYTES,
                        B.data, B.elem_offset + tx * OPERAND_BYTES + half * (OPERAND_BYTES // 2),
                        C.data, C.elem_offset + tx * ACC_VALUES + half * (ACC_VALUES // 2),
                        False, dtype="int32"))

    return desc, impl


def _int32_product(a, b):
    return Cast("int32", a) * Cast("int32", b)


def _int16_product(a, b):
    return Cast("int32", Cast("int16", a) * Cast("int16", b))


# How a GEMM's TE definition writes one multiply -> its name in the intrinsic names.
PRODUCTS = {"i32": _int32_product, "i16": _int16_product}


def ldmatrix_intrin(operand: str, dtype: str, shared_scope: str = "shared.dyn") -> str:
    name = f"qcompile_ldmatrix_{operand}_{dtype}_{shared_scope.replace('.', '_')}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, *_ldmatrix(operand, dtype, shared_scope))
    return name


def mma_intrin(a_dtype: str, b_dtype: str, product: str) -> str:
    name = f"qcompile_mma_{a_dtype}_{b_dtype}_{product}"
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, *_mma(a_dtype, b_dtype, PRODUCTS[product]))
    return name
