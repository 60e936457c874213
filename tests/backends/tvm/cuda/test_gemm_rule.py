"""target="cuda": int8 GEMMs (linear, ungrouped conv) on tensor cores, depthwise convs one thread per output.

Without a GPU the tests check what nvcc made of the kernels (PTX instructions, ptxas spills). The `gpu`
test compares this family's GPU cases (cases.py: gemm_cases()) with target="reference" bit for bit where
TVM's compiler and a GPU are both present; the lent GPU machine has the TVM runtime only and runs the same
cases from the bundle (tools/cuda_bundle.py, tests/gpu).
"""
import re

import pytest
import torch
from torch import nn

import qcompile
from tests.backends.tvm.cuda.case_models import FeedForward, odd_linear
from tests.backends.tvm.cuda.cases import gemm_cases
from tests.backends.tvm.cuda.cuda_on_cpu import assert_matches_reference
from tests.models import DepthwiseBlocks

MMA_U8S8 = "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32"


def _build(model, inputs, calibration, **kw):
    return qcompile.compile(model, inputs, target="cuda", calibration=calibration, progress=False, **kw)


def _kernels(cm):
    return cm._runner.kernels


def _gemm_kernels(kernels) -> dict[str, str]:
    """The PTX of the kernels that hold an int8 GEMM (a fused linear or conv accumulator)."""
    return {name: ptx for name, ptx in kernels.kernel_ptx().items() if re.search(r"linear|conv2d", name)}


@pytest.fixture(scope="module")
def resnet_build(resnet):
    """At batch 2: with one static row the classifier is a GEMV, which dlight's GEMV rule keeps (a 16-row
    mma tile would waste 15 rows of a weight-bandwidth-bound kernel)."""
    model, _, calibration = resnet
    x = torch.cat(calibration)
    return _build(model, (x,), [x])


def test_every_resnet_gemm_runs_on_tensor_cores_without_spills(resnet_build):
    kernels = _kernels(resnet_build)
    gemms = _gemm_kernels(kernels)
    assert len(gemms) == 7  # 6 convs (stem, 4 in blocks, the downsample) + the classifier
    spills = kernels.spills()
    for name, ptx in gemms.items():
        assert MMA_U8S8 in ptx, name
        assert "ldmatrix.sync.aligned.m8n8.x4.shared.b16" in ptx, name
        assert spills[name] == 0, name


def test_odd_linear_with_free_batch_builds_on_tensor_cores():
    """M = 3 (free at run time), K = 27, N = 10 and 37: every size padded to the tile."""
    torch.manual_seed(0)
    x = torch.randn(3, 27)
    cm = _build(odd_linear(), (x,), [x], dynamic_shapes={"input": {0: torch.export.Dim("batch", max=4096)}})
    kernels = _kernels(cm)
    gemms = _gemm_kernels(kernels)
    assert len(gemms) == 2
    for name, ptx in gemms.items():
        assert MMA_U8S8 in ptx and kernels.spills()[name] == 0, name
    # The requantize (and ReLU clamp) is applied to the accumulators in the GEMM kernel itself.
    assert any("requantize" in name for name in gemms)


def test_large_gemm_stages_operands_with_cp_async():
    """K a multiple of 16: the global -> shared copies are 16-byte cp.async in a 3-stage pipeline."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256)).eval()
    x = torch.randn(256, 256)
    kernels = _kernels(_build(model, (x,), [x]))
    for name, ptx in _gemm_kernels(kernels).items():
        assert MMA_U8S8 in ptx and "cp.async.cg.shared.global" in ptx and "cp.async.wait_group 2" in ptx, name
        assert kernels.spills()[name] == 0, name


def test_conv_weights_are_copied_16_bytes_per_thread():
    """Weights as [cout, kh, kw, cin] (cuda_conv.py): K is innermost, so with cin a multiple of 16 the B
    copies are 16-byte cp.async like A's; in [kh, kw, cin, cout] order they were byte loads, cout apart."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()).eval()
    x = torch.randn(2, 32, 16, 16)
    gemms = _gemm_kernels(_kernels(_build(model, (x,), [x])))
    assert len(gemms) == 2
    for name, ptx in gemms.items():
        assert MMA_U8S8 in ptx and "cp.async.cg.shared.global" in ptx, name
        assert "ld.global.nc.u8" not in ptx and "ld.global.nc.s8" not in ptx, name


def test_depthwise_convs_run_one_thread_per_output():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    kernels = _kernels(_build(DepthwiseBlocks().eval(), (x,), [x]))
    source = kernels.source
    # (A depthwise conv whose float epilogue has a transpose keeps that part in a second kernel, `_kernel_1`.)
    # (The GEMM kernels are told apart from the depthwise ones by their mma.)
    depthwise = [name for name, ptx in kernels.kernel_ptx().items()
                 if "conv2d" in name and name.endswith("_kernel") and MMA_U8S8 not in ptx]
    assert len(depthwise) == 4
    for name in depthwise:
        assert re.search(rf"__launch_bounds__\(256\) {name}\(", source), name


def _gemm_case(name):
    return next(c for c in gemm_cases() if c.name == name)


@pytest.mark.parametrize("name", [c.name for c in gemm_cases()])
def test_the_cuda_lowering_is_bit_exact_on_the_cpu(name):
    """Every GPU case's integer graph through the CUDA lowering (convs with [cout, kh, kw, cin] weights:
    cuda_conv.py), built for this CPU: the arithmetic the GPU kernels schedule, against the reference."""
    case = _gemm_case(name)
    assert_matches_reference(case.model, case.example, case.calibration, case.options, atol=case.atol)


# ------------------------------------------------------------------ on a GPU
def _gpu_present() -> bool:
    from qcompile.backends.tvm.cuda import nvcc_build

    return nvcc_build.gpu_present()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_present(), reason="needs an NVIDIA GPU (cuda_build.gpu_present() is False)")
@pytest.mark.parametrize("name", [c.name for c in gemm_cases()])
def test_bit_exact_with_reference_on_the_gpu(name):
    case = _gemm_case(name)
    example = case.example
    reference = qcompile.compile(case.model, example, target="reference", calibration=case.calibration,
                                 progress=False, **case.options)
    cuda = _build(case.model, example, case.calibration, **case.options)
    expected, got = reference(*example), cuda(*example)
    for e, g in zip(expected if isinstance(expected, tuple) else (expected,), got if isinstance(got, tuple) else (got,)):
        if case.atol:  # a float tail (cases.FLOAT_TAIL)
            torch.testing.assert_close(g.cpu(), e, rtol=0, atol=case.atol)
        else:
            assert torch.equal(e, g.cpu()), case.name


# ------------------------------------------------------------------ fragment layouts, against the PTX ISA
def _ptx_a_fragment(lane: int, byte: int) -> tuple[int, int]:
    """(row, k) of A's byte in a lane for mma.m16n8k32 with 8-bit A (PTX ISA, "Matrix Fragments for
    mma.m16n8k32"): register q = byte // 4 holds row groupID (+8 for q = 1, 3), k = 4 * threadID_in_group
    + (byte % 4) (+16 for q = 2, 3)."""
    q, j = divmod(byte, 4)
    return 8 * (q % 2) + lane // 4, 16 * (q // 2) + 4 * (lane % 4) + j


def _ptx_b_fragment(lane: int, byte: int) -> tuple[int, int]:
    """(n, k) for the two mma of a 16-column tile: bytes 0-7 the first's B (columns 0-7), 8-15 the
    second's; each mma's B: register r holds column groupID, k = 4 * threadID_in_group + j (+16 for r = 1)."""
    half, rest = divmod(byte, 8)
    r, j = divmod(rest, 4)
    return 8 * half + lane // 4, 16 * r + 4 * (lane % 4) + j


def _ptx_accumulator(lane: int, value: int) -> tuple[int, int]:
    """(row, column) of an int32 accumulator: values 0-3 the first mma's c0..c3 (columns 0-7), 4-7 the
    second's; c0, c1 in row groupID, c2, c3 in row groupID + 8, column 2 * threadID_in_group + (c % 2)."""
    half, c = divmod(value, 4)
    return lane // 4 + 8 * (c // 2), 8 * half + 2 * (lane % 4) + c % 2


def _ldmatrix_x4(row_address, stride: int) -> dict[tuple[int, int], tuple[int, int]]:
    """What ldmatrix.x4 (.b16, no transpose) delivers: (lane, byte) -> (row, column) of the shared tile.
    Lanes 8q..8q+7 give the 8 row addresses of matrix q; lane l receives in register q the 4 bytes at
    row l // 4 of matrix q, from byte 4 * (l % 4)."""
    got = {}
    for lane in range(32):
        for q in range(4):
            address = int(row_address(8 * q + lane // 4, stride)) + 4 * (lane % 4)
            for j in range(4):
                got[lane, 4 * q + j] = divmod(address + j, stride)
    return got


@pytest.mark.parametrize("operand, ptx", [("A", _ptx_a_fragment), ("B", _ptx_b_fragment)])
def test_operand_fragments_are_what_ldmatrix_loads_and_mma_reads(operand, ptx):
    """The layouts the intrinsics declare (and tensorize checks the schedule against) are the ones the
    hardware uses: ldmatrix with the intrinsic's row addresses loads each element where the declared
    layout puts it, and that is where mma.m16n8k32 reads it. Checked for a padded shared row (80 bytes)."""
    from qcompile.backends.tvm.cuda import mma_intrin

    layout, row_address = mma_intrin.OPERANDS[operand]
    loaded = _ldmatrix_x4(row_address, stride=80)
    for row in range(16):
        for k in range(32):
            lane, byte = (int(v) for v in layout(row, k))
            assert loaded[lane, byte] == (row, k)
            assert ptx(lane, byte) == (row, k)


def test_accumulator_fragment_is_the_mma_one():
    from qcompile.backends.tvm.cuda import mma_intrin

    for row in range(16):
        for col in range(16):
            lane, value = (int(v) for v in mma_intrin.fragment_of_accumulator(row, col))
            assert _ptx_accumulator(lane, value) == (row, col)


@pytest.mark.parametrize("free_batch", [False, True])
def test_sequence_linears_run_on_tensor_cores(free_batch):
    """Rows = batch x sequence, with the batch fixed or free (the free one is scheduled without TVM's
    region checks, which cannot follow the fused rows: cuda_gemm.TensorCoreGemm)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 64)
    dims = {"dynamic_shapes": ({0: torch.export.Dim("batch", max=64)},)} if free_batch else {}
    kernels = _kernels(_build(FeedForward().eval(), (x,), [x], **dims))
    gemms = _gemm_kernels(kernels)
    assert len(gemms) == 2
    for name, ptx in gemms.items():
        assert MMA_U8S8 in ptx and kernels.spills()[name] == 0, name


@pytest.mark.parametrize("arch, m, n, k, bk", [
    ("sm_90a", 4096, 4096, 4096, 128),  # deep K steps: faster on the H100 (bench/results/cuda/*-h100-*)
    ("sm_90a", 8192, 3072, 768, 64),  # too few steps of 128 to fill the pipeline
    ("sm_90a", 4096, 4096, 1088, 64),  # K not whole steps of 128 (17 of 64)
    ("sm_80", 4096, 4096, 4096, 64),  # not measured there
    ("sm_90a", 16, 4096, 4096, 64),  # the small tile
])
def test_large_gemms_on_sm_90_take_deep_k_steps(arch, m, n, k, bk):
    from tvm import tirx

    from qcompile.backends.tvm.cuda.gemm_rule import choose_tile

    assert choose_tile(*(tirx.IntImm("int64", d) for d in (m, n, k)), arch).bk == bk
