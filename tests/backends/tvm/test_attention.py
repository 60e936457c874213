"""Float attention (aten.scaled_dot_product_attention between a dequantize and a quantize) lowered as torch
defines it (attention.py): every form of torch's signature matches the reference backend, which runs the
island in torch, on the x86 build; on CUDA the products are kernels the GPU's matmul rule tiles."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qcompile
from qcompile.backends.tvm.attention import AttentionError


class Sdpa(nn.Module):
    """Two query heads of 16 over a [batch, seq, 32] input; `kv_heads` key/value heads; `rank` 3 folds the
    heads into the batch."""

    def __init__(self, mask=None, kv_heads=2, rank=4, **options):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 16 * kv_heads), nn.Linear(32, 16 * kv_heads)
        self.mask, self.options, self.kv_heads, self.rank = mask, options, kv_heads, rank

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 2, 16).transpose(1, 2)
        k, v = (t.view(b, s, self.kv_heads, 16).transpose(1, 2) for t in (self.k(x), self.v(x)))
        if self.rank == 3:
            q, k, v = (t.reshape(b * 2, s, 16) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, **self.options)
        return y.reshape(b, 2, s, 16).transpose(1, 2).reshape(b, s, 32)


def _variants():
    torch.manual_seed(0)
    keep = torch.rand(24, 24) > 0.3
    keep[:, 0] = True  # no row fully masked
    return {
        "default": Sdpa(),
        "scale": Sdpa(scale=0.1),  # TVM's importer ignores it
        "bool_mask_2d": Sdpa(keep),  # TVM's importer takes 4-D float masks only
        "float_mask_4d": Sdpa(torch.randn(2, 1, 24, 24)),
        "causal": Sdpa(is_causal=True),
        "grouped_query": Sdpa(kv_heads=1, enable_gqa=True),  # TVM's importer drops enable_gqa
        "rank_3": Sdpa(rank=3),
    }


@pytest.mark.parametrize("name", list(_variants()))
def test_attention_matches_the_reference(name):
    model = _variants()[name].eval()
    torch.manual_seed(1)
    x, calibration = torch.randn(2, 24, 32), [torch.randn(2, 24, 32) for _ in range(2)]
    ref = qcompile.compile(model, (x,), target="reference", calibration=calibration, progress=False)
    x86 = qcompile.compile(model, (x,), target="x86", calibration=calibration, progress=False)
    torch.testing.assert_close(x86(x), ref(x), rtol=0, atol=1e-6)


# On a GPU the island's sums run in the GPU's order: its outputs (float, nothing quantized after the
# attention) are compared within this bound.
GPU_ATOL = 1e-5


def gpu_cases() -> list[tuple]:
    """(name, model, example inputs, calibration, compile options) the GPU bundle compares with the
    reference (tools/cuda_bundle.py): a 2-D boolean mask, and causal grouped-query attention with a scale."""
    variants = _variants()
    torch.manual_seed(2)
    x = torch.randn(2, 24, 32)
    causal_gqa = Sdpa(kv_heads=1, enable_gqa=True, is_causal=True, scale=0.2)
    return [("sdpa_bool_mask", variants["bool_mask_2d"].eval(), (x,), [x], {}),
            ("sdpa_causal_grouped_query", causal_gqa.eval(), (x,), [x], {})]


@pytest.mark.parametrize("case", gpu_cases(), ids=lambda c: c[0])
def test_gpu_cases_build_for_cuda_without_attention_kernels(case):
    name, model, example, calibration, options = case
    cm = qcompile.compile(model, example, target="cuda", calibration=calibration, progress=False, **options)
    ptx = cm._runner.kernels.kernel_ptx()
    assert not any("attention" in n for n in ptx) and sum("matmul" in n for n in ptx) == 2, sorted(ptx)


def test_attention_dropout_is_a_clear_error():
    model = Sdpa(dropout_p=0.1).eval()
    x = torch.randn(2, 24, 32)
    with pytest.raises(AttentionError, match="dropout"):
        qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False)
