"""Float attention (aten.scaled_dot_product_attention between a dequantize and a quantize) lowered as torch
defines it (attention_lowering.py): every form of torch's signature matches the reference backend, which runs the
island in torch, on the x86 build; on CUDA the products are kernels the GPU's matmul rule tiles."""
import pytest
import torch

import qcompile
from qcompile.backends.tvm.attention_lowering import AttentionError
from tests.backends.tvm.cuda.cases import sdpa_cases
from tests.backends.tvm.sdpa_models import Sdpa, sdpa_variants


@pytest.mark.parametrize("name", list(sdpa_variants()))
def test_attention_matches_the_reference(name):
    model = sdpa_variants()[name].eval()
    torch.manual_seed(1)
    x, calibration = torch.randn(2, 24, 32), [torch.randn(2, 24, 32) for _ in range(2)]
    ref = qcompile.compile(model, (x,), target="reference", calibration=calibration, progress=False)
    x86 = qcompile.compile(model, (x,), target="x86", calibration=calibration, progress=False)
    torch.testing.assert_close(x86(x), ref(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", sdpa_cases(), ids=lambda c: c.name)
def test_gpu_cases_build_for_cuda_without_attention_kernels(case):
    """The GPU cases' attention (cuda/cases.py: sdpa_cases) builds no attention kernel: its two products are
    matmul kernels."""
    cm = qcompile.compile(case.model, case.example, target="cuda", calibration=case.calibration, progress=False,
                          **case.options)
    ptx = cm._runner.kernels.kernel_ptx()
    assert not any("attention" in n for n in ptx) and sum("matmul" in n for n in ptx) == 2, sorted(ptx)


def test_attention_dropout_is_a_clear_error():
    model = Sdpa(dropout_p=0.1).eval()
    x = torch.randn(2, 24, 32)
    with pytest.raises(AttentionError, match="dropout"):
        qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False)
