"""qc.matmul_int (activation x activation, batched: attention's Q.K^T and P.V) on CUDA targets: a batch of
tensor-core GEMMs with the zero points' row and column terms (cuda_matmul.py).

The kernels' arithmetic is checked here bit for bit by building the CUDA lowering's Relax module for this
CPU (the same TE definitions, scheduled for LLVM), the schedule by what nvcc made of it (the mma in the
matmul kernels, the requantize fused into them, no spills); the GPU compares the attention models of
cases.py's attention_matmul_cases() with the reference (tools/cuda_bundle.py, tests/gpu)."""
import pytest
import torch

import qcompile
from qcompile.backends.tvm.cuda import matmul_lowering
from qcompile.backends.tvm.cuda.backend import CudaBackend
from tests.backends.tvm.cuda.cases import attention_matmul_cases
from tests.backends.tvm.cuda.cuda_on_cpu import (
    assert_matches_reference,
    built_for_cpu,
    cuda_lowering,
)
from tests.backends.tvm.matmul_cases import CASES, I8, U8, matmul_graph, random_operand

MMA = "mma.sync.aligned.m16n8k32.row.col.s32.{}.{}.s32"
PTX_TYPE = {U8: "u8", I8: "s8"}

# Beyond the CPU kernel's cases (matmul_cases.CASES): MiniLM's shapes (head dim 32, sequence 128), an odd K
# and N above the tensor-core minimum, and each operand dtype pair.
TENSOR_CORE_CASES = [
    ((1, 12, 128, 32), (1, 12, 32, 128), U8, U8, 131, 126, None),  # Q.K^T
    ((1, 12, 128, 128), (1, 12, 128, 32), U8, U8, 0, 129, (1234567890, 40, 118)),  # P.V + requantize
    ((2, 3, 20, 17), (2, 3, 17, 20), I8, U8, -5, 250, None),
    ((3, 9, 48), (1, 48, 16), U8, I8, 255, -128, (1500000000, 38, 9)),  # B broadcast over A's batch
    ((2, 16, 32), (2, 32, 24), I8, I8, 0, 0, None),  # no zero-point terms
]


def _cpu_build_of_cuda_lowering(gm):
    mod = cuda_lowering(gm)
    return mod, built_for_cpu(mod)


def _taken(case) -> bool:
    shape_a, shape_b = case[:2]
    return shape_a[-1] >= matmul_lowering.MIN_SIZE and shape_b[-1] >= matmul_lowering.MIN_SIZE


@pytest.mark.parametrize("case", CASES + TENSOR_CORE_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}-{c[3]}-{c[4]}-{c[5]}")
def test_cuda_lowering_is_bit_exact(case):
    """Each case through the CUDA lowering, run on this CPU: the batched GEMM and its zero-point terms
    where K and N reach the tensor-core minimum, the TE definition (also for ranks that differ) below it."""
    shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant = case
    gm = matmul_graph(shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant)
    mod, runner = _cpu_build_of_cuda_lowering(gm)
    funcs = {gv.name_hint for gv in mod.functions}
    if _taken(case):
        assert "matmul_int" in funcs and "transpose_b" in funcs, funcs
        assert ("row_terms" in funcs) == (b_zp != 0) and ("col_terms" in funcs) == (a_zp != 0), funcs
    else:
        assert "matmul_int" not in funcs, funcs
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        a, b = random_operand(shape_a, dtype_a, gen), random_operand(shape_b, dtype_b, gen)
        assert torch.equal(runner(a, b)[0], gm(a, b)[0])


def test_extreme_operands_wrap_like_the_reference():
    """All-255 uint8 against all -128 int8 with zero points at the opposite ends: the raw product and the
    terms are far from the result, which int32 wrap-around makes exact."""
    gm = matmul_graph((1, 16, 4096), (1, 4096, 16), U8, I8, 0, 127)
    a, b = torch.full((1, 16, 4096), 255, dtype=U8), torch.full((1, 4096, 16), -128, dtype=I8)
    assert torch.equal(_cpu_build_of_cuda_lowering(gm)[1](a, b)[0], gm(a, b)[0])


@pytest.mark.parametrize("case", TENSOR_CORE_CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[2]}-{c[3]}")
def test_matmul_kernels_run_on_tensor_cores(case):
    shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant = case
    kernels = CudaBackend().build(matmul_graph(*case)).kernels
    ptx = kernels.kernel_ptx()
    (name,) = [n for n in ptx if "matmul_int" in n]
    assert MMA.format(PTX_TYPE[dtype_a], PTX_TYPE[dtype_b]) in ptx[name]
    assert ("requantize" in name) == (requant is not None)  # fused into the GEMM's epilogue
    assert not any(kernels.spills().values())


@pytest.mark.parametrize("case", attention_matmul_cases(), ids=lambda c: c.name)
def test_attention_lowering_is_bit_exact_on_the_cpu(case):
    assert_matches_reference(case.model, case.example, case.calibration, case.options, atol=case.atol)


@pytest.mark.parametrize("case", attention_matmul_cases(), ids=lambda c: c.name)
def test_attention_matmuls_run_on_tensor_cores(case):
    cm = qcompile.compile(case.model, case.example, target="cuda", calibration=case.calibration, progress=False,
                          **case.options)
    kernels = cm._runner.kernels
    matmuls = {n: ptx for n, ptx in kernels.kernel_ptx().items() if "matmul_int" in n}
    assert len(matmuls) == 2, sorted(kernels.kernel_ptx())
    assert all(MMA.format("u8", "u8") in ptx for ptx in matmuls.values())
    assert not any(kernels.spills().values())
