"""Float16 x float16 -> float32 GEMMs on tensor cores (wmma, 16 x 16 x 16): TVM's own dlight rule
(MatmulTensorization) for the kernels whose reduction multiplies two float16 operands, such as the
weight-only Linear at large static batches (weight_only_lowering.py), where a producer of an operand (the
weights' dequantize) is computed inside the global -> shared copy.

dlight's matmul rule tensorizes only for archs whose name is digits after "sm_": for "sm_90a", this
backend's default, it never did. It also leaves every GEMM with a static size of 64 or less to CUDA
cores; this rule takes them from 17 up (the weight-only path sends it more than 16 rows): its block
tile pads M to 128, and even a 17-row GEMM on it reads each weight once, as a GEMV would."""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (
    MatmulTensorization,
    get_in_out_dtypes,
    get_reduction_blocks,
)
from tvm.target import Target

MIN_EXTENT = 17  # one 16 x 16 x 16 wmma tile and more


def _float16_gemm(func: tirx.PrimFunc) -> bool:
    sch = s_tir.Schedule(func)
    reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if reductions is None:
        return False
    block = sch.get(reductions[0])
    if len(block.reads) < 2 or get_in_out_dtypes(block) != ("float16", "float32"):
        return False
    return all(not isinstance(iv.dom.extent, tirx.IntImm) or int(iv.dom.extent) >= MIN_EXTENT for iv in block.iter_vars)


class Float16TensorCoreGemm(GPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target) or not _float16_gemm(func):
            return None
        return MatmulTensorization().apply(func, target, tunable)
