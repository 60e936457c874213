"""The small models of the GPU cases (cases.py) that the CUDA kernel tests also build: convs and a transformer
MLP for the int8 tensor-core GEMMs (test_gemm_rule.py), Linear layers and an MLP for the weight-only GEMVs
(test_weight_only.py, test_mma_gemv_kernel.py), and the weight-only kernels' error bound.

Weight-only tolerance: the kernel rounds the activations and the group scales to float16 (unit roundoff 2^-11
each) and multiplies and sums exactly enough in float32 that nothing else counts, so for one Linear
|y - y_ref| <= 2 * 2^-11 * sum_k |x_k| |w_nk| (the weights dequantized), checked with a factor 2 of
margin for float32 summation and, through a GELU, for the next layer (`error_bound`). The tensor-core
path for more than MAX_ROWS rows also rounds each dequantized weight to float16: 3 of the 4 units.
"""
from __future__ import annotations

import torch
from torch import nn


# ------------------------------------------------------------------ int8 GEMMs (convs, linears)
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


class FeedForward(nn.Module):
    """A transformer block's MLP on [batch, seq, features]: the second GEMM's epilogue adds the residual
    in float (its operand dequantized beside the GEMM) before a layer norm."""

    def __init__(self):
        super().__init__()
        self.up, self.down, self.norm = nn.Linear(64, 128), nn.Linear(128, 64), nn.LayerNorm(64)

    def forward(self, x):
        return self.norm(x + self.down(nn.functional.gelu(self.up(x))))


def odd_linear() -> nn.Sequential:
    """K = 27, N = 10 and 37: every size padded to the tensor-core tile."""
    return nn.Sequential(nn.Linear(27, 10), nn.ReLU(), nn.Linear(10, 37)).eval()


# ------------------------------------------------------------------ weight-only (float16 activations)
FP16_ROUNDOFF = 2.0**-11


class MLP(nn.Module):
    def __init__(self, d: int, hidden: int, bias: bool = True):
        super().__init__()
        self.up, self.down = nn.Linear(d, hidden, bias=bias), nn.Linear(hidden, d, bias=bias)

    def forward(self, x):
        return self.down(nn.functional.gelu(self.up(x)))


def seeded_linear(k: int, n: int, seed: int, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(k, n, bias=bias).eval()


def error_bound(model: nn.Module, x: torch.Tensor) -> float:
    """The largest |y - y_ref| the float16 roundings allow (module docstring), for a Linear or an MLP:
    each layer adds 2 * 2^-11 * |x| @ |W|.T, and carries its input's bound through |W| (GELU's slope is
    below 1.13); times 2 for the margin."""
    layers = [model] if isinstance(model, nn.Linear) else [model.up, model.down]
    bound = torch.zeros_like(x)
    with torch.no_grad():
        for layer in layers:
            w = layer.weight.abs()
            bound = 2 * FP16_ROUNDOFF * (x.abs() @ w.T) + (1.13 * bound) @ w.T
            x = nn.functional.gelu(layer(x))
    return 2 * float(bound.max())
