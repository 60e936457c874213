"""target="cuda": int8 GEMMs (linear, ungrouped conv) on tensor cores, depthwise convs one thread per output.

Without a GPU the tests check what nvcc made of the kernels (PTX instructions, ptxas spills). The `gpu`
test compares gpu_cases() with target="reference" bit for bit where TVM's compiler and a GPU are both
present; the lent GPU machine has the TVM runtime only and runs the same cases from the bundle
(tools/cuda_bundle.py, tests/gpu).
"""
import re

import pytest
import torch
from torch import nn

import qcompile
from tests.models import DepthwiseBlocks, TinyResNet

MMA_U8S8 = "mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32"


class ConvStack(nn.Module):
    """Convs of the shapes real models have: 3 input channels (K = 27), 10 output channels, a strided
    conv, a pointwise one, a residual add and a classifier with 10 outputs."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 3, padding=1)
        self.down = nn.Conv2d(10, 24, 3, stride=2, padding=1)
        self.pw = nn.Conv2d(24, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.down(torch.relu(self.stem(x))))
        x = torch.relu(x + self.pw(x))
        return self.fc(x.mean((2, 3)))


def _odd_linear():
    return nn.Sequential(nn.Linear(27, 10), nn.ReLU(), nn.Linear(10, 37)).eval()


def gpu_cases() -> list[tuple]:
    """(name, model, example inputs, calibration) of every case the gpu tests compare with the reference
    (the device bundle is built from these)."""
    torch.manual_seed(0)
    cases = []
    x = torch.randn(3, 27)
    cases.append(("odd_linear", _odd_linear(), (x,), [x, torch.randn(5, 27)]))
    x = torch.randn(2, 3, 32, 32)
    cases.append(("tiny_resnet", TinyResNet().eval(), (x,), [x]))
    x = torch.randn(2, 3, 20, 20)
    cases.append(("conv_stack", ConvStack().eval(), (x,), [x]))
    x = torch.randn(2, 3, 16, 16)
    cases.append(("depthwise", DepthwiseBlocks().eval(), (x,), [x]))
    return cases


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
    cm = _build(_odd_linear(), (x,), [x], dynamic_shapes={"input": {0: torch.export.Dim("batch", max=4096)}})
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


# ------------------------------------------------------------------ on a GPU
def _gpu_present() -> bool:
    from qcompile.backends.tvm import cuda_build

    return cuda_build.gpu_present()


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_present(), reason="needs an NVIDIA GPU (cuda_build.gpu_present() is False)")
@pytest.mark.parametrize("case", [c[0] for c in gpu_cases()])
def test_bit_exact_with_reference_on_the_gpu(case):
    name, model, example, calibration = next(c for c in gpu_cases() if c[0] == case)
    reference = qcompile.compile(model, example, target="reference", calibration=calibration, progress=False)
    cuda = _build(model, example, calibration)
    expected, got = reference(*example), cuda(*example)
    for e, g in zip(expected if isinstance(expected, tuple) else (expected,), got if isinstance(got, tuple) else (got,)):
        assert torch.equal(e, g), case
