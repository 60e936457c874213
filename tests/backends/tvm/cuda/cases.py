"""Every model the GPU checks compare with the "reference" backend, in one list: the tensor-core GEMMs, batched
attention matmuls and depthwise convs (bit-exact), float attention and the weight-only GEMVs (float16
activations) within their bounds. tools/cuda_bundle.py builds them for the GPU machine;
tools/cuda_emulate_cases.py runs them all here on the CPU emulator of the CUDA kernels, and
test_emulated_models.py a subset (CI's time). The CUDA kernel tests (test_gemm_rule.py, test_matmul_lowering.py,
test_weight_only.py, ../test_attention.py) check their own family's cases (gemm_cases() ...) without a GPU.

This module and the models it builds (case_models.py, ../sdpa_models.py, tests/models.py) import no test
module: the tools import it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import qcompile
from qcompile.backends.tvm.cuda.emulator.kernels import emulated_gpu
from tests.backends.tvm.cuda.case_models import (
    MLP,
    ConvStack,
    FeedForward,
    error_bound,
    odd_linear,
    seeded_linear,
)
from tests.backends.tvm.sdpa_models import Sdpa, sdpa_variants
from tests.models import Attention, DepthwiseBlocks, TinyResNet


@dataclass(frozen=True)
class GpuCase:
    name: str
    model: object
    example: tuple
    calibration: list
    options: dict  # qcompile.compile's, for both backends
    atol: float = 0.0  # 0: bit-exact
    gpu_options: dict = field(default_factory=dict)  # the CUDA backend's own (gemv=...)


# ------------------------------------------------------------------ int8 GEMMs and depthwise convs
# Cases whose output comes out of float ops after the last integer kernel (the feed-forward's LayerNorm):
# the GPU sums in its own order, so they are compared within this absolute bound, four orders of magnitude
# below one quantization step of their input: an integer kernel off by one still fails. On the H200 the
# largest difference was 4.8e-7 (bench/results/cuda/2026-11-26-h200-3).
FLOAT_TAIL = {"feedforward_free_batch": 1e-5}


def gemm_cases() -> list[GpuCase]:
    """The int8 tensor-core GEMMs (linear, ungrouped conv) and the depthwise convs (test_gemm_rule.py)."""
    torch.manual_seed(0)
    cases = []

    def add(name, model, example, calibration, options):
        cases.append(GpuCase(name, model, example, calibration, options, FLOAT_TAIL.get(name, 0.0)))

    x = torch.randn(3, 27)
    add("odd_linear", odd_linear(), (x,), [x, torch.randn(5, 27)], {})
    x = torch.randn(2, 3, 32, 32)
    add("tiny_resnet", TinyResNet().eval(), (x,), [x], {})
    x = torch.randn(2, 3, 20, 20)
    add("conv_stack", ConvStack().eval(), (x,), [x], {})
    free = {"dynamic_shapes": ({0: torch.export.Dim("batch", max=64)},)}  # scheduled without TVM's region checks
    add("conv_stack_free_batch", ConvStack().eval(), (torch.randn(3, 3, 20, 20),), [x], free)
    x = torch.randn(3, 16, 64)
    add("feedforward_free_batch", FeedForward().eval(), (x,), [x], free)
    x = torch.randn(2, 3, 16, 16)
    add("depthwise", DepthwiseBlocks().eval(), (x,), [x], {})
    return cases


# ------------------------------------------------------------------ int8 attention matmuls (qc.matmul_int)
def attention_matmul_cases() -> list[GpuCase]:
    """Attention with a head dim of 32 (both matmuls on tensor cores), at a fixed and a free batch, at
    sequence 128 (MiniLM's: Q.K^T on the large tile with a 32-deep K step, P.V on 32 columns), and with a
    free sequence length (test_matmul_lowering.py). Bit-exact."""
    torch.manual_seed(0)
    model = Attention(d=64, heads=2).eval()
    x, long = torch.randn(2, 32, 64), torch.randn(2, 128, 64)
    free = {"dynamic_shapes": ({0: torch.export.Dim("batch", max=64)},)}
    free_length = {"dynamic_shapes": ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("length", min=2, max=512)},)}
    return [GpuCase("attention", model, (x,), [x, torch.randn(2, 32, 64)], {}),
            GpuCase("attention_free_batch", model, (torch.randn(3, 32, 64),), [x], free),
            GpuCase("attention_seq128", model, (long,), [long, torch.randn(2, 128, 64)], {}),
            # Q.K^T with a free N, P.V with a free K: both padded to the tile at run time
            GpuCase("attention_free_length", model, (torch.randn(2, 40, 64),), [x], free_length)]


# ------------------------------------------------------------------ float attention (sdpa)
# On a GPU the island's sums run in the GPU's order: its outputs (float, nothing quantized after the
# attention) are compared within this bound.
SDPA_ATOL = 1e-5


def sdpa_cases() -> list[GpuCase]:
    """A 2-D boolean mask, and causal grouped-query attention with a scale (../test_attention.py)."""
    variants = sdpa_variants()
    torch.manual_seed(2)
    x = torch.randn(2, 24, 32)
    causal_gqa = Sdpa(kv_heads=1, enable_gqa=True, is_causal=True, scale=0.2)
    return [GpuCase("sdpa_bool_mask", variants["bool_mask_2d"].eval(), (x,), [x], {}, SDPA_ATOL),
            GpuCase("sdpa_causal_grouped_query", causal_gqa.eval(), (x,), [x], {}, SDPA_ATOL)]


# ------------------------------------------------------------------ weight-only Linear layers
def weight_only_cases() -> list[GpuCase]:
    """bits="w4" / "w8" (test_weight_only.py): no calibration; the outputs must be within the float16
    roundings' bound (case_models.error_bound, absolute) of the reference's."""
    g = torch.Generator().manual_seed(7)
    cases = []

    def add(name, model, x, **kwargs):
        cases.append(GpuCase(name, model, (x,), None, kwargs, error_bound(model, x)))

    add("linear_4096_w4_m1", seeded_linear(4096, 4096, 0), torch.randn(1, 4096, generator=g), bits="w4")
    add("linear_4096_w8_m1", seeded_linear(4096, 4096, 1), torch.randn(1, 4096, generator=g), bits="w8")
    add("linear_1152x640_w4_m5_nobias", seeded_linear(1152, 640, 2, bias=False), torch.randn(5, 1152, generator=g), bits="w4")
    add("linear_2048_w4_3d", seeded_linear(2048, 1000, 3), torch.randn(2, 3, 2048, generator=g), bits="w4")
    add("mlp_1024x4096_w4_m1", MLP(1024, 4096).eval(), torch.randn(1, 1024, generator=g), bits="w4")
    add("mlp_512x1024_w4_dynamic_batch", MLP(512, 1024).eval(), torch.randn(11, 512, generator=g), bits="w4",
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    add("mlp_512x1024_w8_m16", MLP(512, 1024).eval(), 8 * torch.randn(16, 512, generator=g), bits="w8")
    add("mlp_512x1024_w4_m64", MLP(512, 1024).eval(), torch.randn(64, 512, generator=g), bits="w4")  # tensor cores
    return cases


# The GEMVs run on tensor cores by default (gemv="auto"); these are also built with the CUDA-core GEMV
# (cases NAME_cc, the same bound): a free batch (int4), 16 static rows (int8), 5 rows without a bias.
CUDA_CORE_GEMV = {"mlp_512x1024_w4_dynamic_batch", "mlp_512x1024_w8_m16", "linear_1152x640_w4_m5_nobias"}


def gpu_cases() -> list[GpuCase]:
    cases = gemm_cases() + attention_matmul_cases() + sdpa_cases()
    for case in weight_only_cases():
        cases.append(case)
        if case.name in CUDA_CORE_GEMV:
            cases.append(GpuCase(f"{case.name}_cc", case.model, case.example, case.calibration, case.options,
                                 case.atol, {"gemv": "cuda_cores"}))
    return cases


# ------------------------------------------------------------------ running a case
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
