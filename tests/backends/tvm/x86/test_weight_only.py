"""target="x86" with weight-only and dynamic Linear layers: the integer part of linear_dynamic is bit-exact
with the reference; the float parts (dequantized weights, the epilogue) agree to float tolerance."""
import pytest
import torch
from torch import nn

import qcompile


def _both(model, example, config):
    ref = qcompile.compile(model, example, target="reference", config=config, progress=False)
    x86 = qcompile.compile(model, example, target="x86", config=config, progress=False)
    return ref, x86


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 96), nn.Linear(96, 24)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


@pytest.mark.parametrize("config", [
    qcompile.QuantConfig(bits=4, activations="float", group_size=32),
    qcompile.QuantConfig(bits=4, activations="float"),
    qcompile.QuantConfig.from_bits("w8"),
    qcompile.QuantConfig(activations="dynamic"),
])
def test_mlp_matches_reference(config):
    torch.manual_seed(0)
    model = MLP().eval()
    ref, x86 = _both(model, (torch.randn(2, 7, 64),), config)
    for seed in range(3):
        probe = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(seed)) * 3
        torch.testing.assert_close(x86(probe), ref(probe), rtol=1e-5, atol=1e-5)


def test_dynamic_integer_part_is_bit_exact():
    """With power-of-two scales and no bias the float epilogue is exact, so equal outputs mean equal int32
    accumulators: every weight row's largest magnitude is 127/64 (scale 1/64), every input row spans
    [-1, 2.984375] (scale 1/64, zero point 64), and the rest of the input rounds half to even."""
    torch.manual_seed(2)
    lin = nn.Linear(40, 12, bias=False).eval()
    with torch.no_grad():
        w = torch.randint(-127, 128, (12, 40)).float()
        w[:, 0] = 127
        lin.weight.copy_(w / 64)
    x = torch.rand(3, 5, 40) * 3.9 - 1
    x[..., 0], x[..., 1] = -1.0, 2.984375
    x[..., 2:6] = torch.tensor([0.5, 1.5, 2.5, -0.5]) / 64  # exact halves between codes
    ref, x86 = _both(lin, (x,), qcompile.QuantConfig(activations="dynamic"))
    assert torch.equal(x86(x), ref(x))
    assert not torch.equal(ref(x), lin(x))  # the input really was quantized


def test_minilm_weight_only_and_dynamic(minilm):
    emb, batches = minilm
    for config in (qcompile.QuantConfig.from_bits("w4"), qcompile.QuantConfig(activations="dynamic")):
        x86 = qcompile.compile(emb, batches[0], target="x86", config=config, progress=False)
        for bt in batches[:2]:  # the reference backend runs the very graph x86 was built from
            torch.testing.assert_close(x86(*bt), x86.graph_module(*bt)[0], rtol=1e-4, atol=1e-4)
