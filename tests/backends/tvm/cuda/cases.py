"""Every model the GPU checks compare with the "reference" backend, in one list: the tensor-core GEMMs, batched
attention matmuls and depthwise convs (bit-exact), float attention and the weight-only GEMVs (float16
activations) within their tests' bounds. tools/cuda_bundle.py builds them for the GPU machine;
tools/cuda_emulate_cases.py runs them all here on the CPU emulator of the CUDA kernels, and
test_cuda_emulated_models.py a subset (CI's time)."""
from __future__ import annotations

from dataclasses import dataclass, field

import qcompile
from qcompile.backends.tvm.cuda.emulator.kernels import emulated_gpu
from tests.backends.tvm import test_attention
from tests.backends.tvm.cuda import test_gemm_rule as test_cuda_gemm, test_matmul_lowering as test_cuda_matmul, test_weight_only as test_cuda_weight_only

# The GEMVs run on tensor cores by default (gemv="auto"); these are also built with the CUDA-core GEMV
# (cases NAME_cc, the same bound): a free batch (int4), 16 static rows (int8), 5 rows without a bias.
CUDA_CORE_GEMV = {"mlp_512x1024_w4_dynamic_batch", "mlp_512x1024_w8_m16", "linear_1152x640_w4_m5_nobias"}


@dataclass(frozen=True)
class GpuCase:
    name: str
    model: object
    example: tuple
    calibration: list
    options: dict  # qcompile.compile's, for both backends
    atol: float = 0.0  # 0: bit-exact
    gpu_options: dict = field(default_factory=dict)  # the CUDA backend's own (gemv=...)


def gpu_cases() -> list[GpuCase]:
    cases = []
    for name, model, example, calibration, options in test_cuda_gemm.gpu_cases() + test_cuda_matmul.gpu_cases():
        cases.append(GpuCase(name, model, example, calibration, options, test_cuda_gemm.FLOAT_TAIL.get(name, 0.0)))
    for name, model, example, calibration, options in test_attention.gpu_cases():
        cases.append(GpuCase(name, model, example, calibration, options, test_attention.GPU_ATOL))
    for name, model, example, calibration, kwargs, tolerance in test_cuda_weight_only.gpu_cases():
        cases.append(GpuCase(name, model, example, calibration, kwargs, tolerance))
        if name in CUDA_CORE_GEMV:
            cases.append(GpuCase(f"{name}_cc", model, example, calibration, kwargs, tolerance, {"gemv": "cuda_cores"}))
    return cases


def compiled(case: GpuCase, target: str, **extra):
    return qcompile.compile(case.model, case.example, target=target, calibration=case.calibration, progress=False,
                            **case.options, **extra)


def outputs(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def emulated_difference(case: GpuCase, **schedule) -> float:
    """The largest difference between the case's outputs from target="cuda", every kernel on the CPU emulator
    (cuda_emulator.emulated_gpu(**schedule)), and from the reference backend."""
    expected = outputs(compiled(case, "reference")(*case.example))
    gpu = compiled(case, "cuda", **case.gpu_options)
    with emulated_gpu(**schedule):
        got = outputs(gpu(*case.example))
    if len(got) != len(expected) or any(g.shape != e.shape or g.dtype != e.dtype for g, e in zip(got, expected)):
        raise AssertionError(f"{case.name}: outputs {[(g.shape, g.dtype) for g in got]}, expected "
                             f"{[(e.shape, e.dtype) for e in expected]}")
    return max(float((g.double() - e.double()).abs().max()) for g, e in zip(got, expected))
