"""Quantization arithmetic: qparams from ranges, quantize/dequantize, fixed-point multipliers.

Rounding: quantize and the float-form requantize round half to even (torch.round), as PyTorch's own
quantize ops do. The integer graph's fixed-point requantize rounds half up (add 2^(shift-1), then an
arithmetic right shift) and is the bit-exact contract every backend implements; see README "Integer semantics".
"""
from __future__ import annotations

import math

import torch

from ..errors import UsageError
from ..ir.qspec import QParams, QSpec

# The smallest scale. Tensors of tiny values are legitimate: random-init MobileViT's activations shrink
# through depth to ranges of a few 1e-6 (scale 2.2e-8), and a floor at float32's epsilon (1.2e-7) left them
# a handful of codes (top-1 agreement 0.75; 0.94 without it). 2^-60 keeps the product of two floored
# scales (an accumulator's) a normal float32.
_EPS = 2.0**-60
DYNAMIC_SPEC = QSpec(dtype="uint8", symmetric=False)  # activations quantized at run time (dynamic_qparams)
MULTIPLIER_BITS = 31  # multipliers are int32 in [2^30, 2^31)


def _broadcast_shape(x: torch.Tensor, axis: int | None) -> list[int]:
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    return shape


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: QSpec) -> QParams:
    """Scale and zero point covering [lo, hi] (widened to include 0 so that 0 is exact)."""
    lo = torch.minimum(torch.as_tensor(lo, dtype=torch.float32), torch.zeros(()))
    hi = torch.maximum(torch.as_tensor(hi, dtype=torch.float32), torch.zeros(()))
    qmin, qmax = spec.qmin, spec.qmax
    if spec.symmetric:
        amax = torch.maximum(-lo, hi)
        if qmin < 0:
            scale = amax / ((qmax - qmin) / 2)
            zp = torch.zeros_like(scale, dtype=torch.int32)
        else:  # symmetric unsigned: centre of the range
            scale = amax / ((qmax - qmin) / 2)
            zp = torch.full_like(scale, (qmin + qmax + 1) // 2, dtype=torch.int32)
    else:
        scale = (hi - lo) / float(qmax - qmin)
        # hi - lo can overflow float32 where the scale itself does not (a range near +-3.4e38)
        scale = torch.where(torch.isfinite(scale), scale, ((hi.double() - lo.double()) / float(qmax - qmin)).float())
        zp = None
    # A range of zero width (a constant-zero tensor: an LSTM's first f * c0) is exact at any scale; 1 keeps it
    # from dragging the fixed-point multipliers of the ops that combine it with real data (an add's shared
    # shift) towards a ratio of 1e-16.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scale = torch.clamp(scale, min=_EPS).to(torch.float32)
    if not bool(torch.isfinite(scale).all()):
        raise UsageError(f"value range [{float(lo.min()):.4g}, {float(hi.max()):.4g}] is not finite: the values "
                         "overflowed float32")
    if zp is None:
        zp = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return QParams(scale=scale, zero_point=zp, spec=spec)


def choose_qparams(x: torch.Tensor, dtype: str = "uint8", symmetric: bool = False, axis: int | None = None) -> tuple:
    """Min-max scale and zero point for `x`; per-tensor gives Python numbers, per-channel tensors."""
    x = torch.as_tensor(x, dtype=torch.float32)
    check_finite(x, "choose_qparams input")
    if x.numel() == 0:
        raise UsageError("choose_qparams input is empty")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, int) or not -x.dim() <= axis < x.dim()):
        raise UsageError(f"axis {axis!r} is not a dimension of a {x.dim()}-D tensor")
    spec = QSpec(dtype=dtype, symmetric=symmetric, axis=axis)
    if axis is None:
        qp = qparams_from_range(x.min(), x.max(), spec)
        return qp.scalar()
    dims = [d for d in range(x.dim()) if d != axis % x.dim()]
    qp = qparams_from_range(x.amin(dim=dims), x.amax(dim=dims), spec)
    return qp.scale, qp.zero_point


def check_finite(x: torch.Tensor, what: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise UsageError(f"{what} contains {bad}")


def quantize_tensor(x, scale, zero_point, qmin: int, qmax: int, dtype: torch.dtype, axis: int | None = None):
    x = torch.as_tensor(x, dtype=torch.float32)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zero_point = torch.as_tensor(zero_point)
    if scale.dim() > 0:
        shape = _broadcast_shape(x, axis)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    q = torch.round(x / scale) + zero_point
    return torch.clamp(q, qmin, qmax).to(dtype)


def dequantize_tensor(q, scale, zero_point, axis: int | None = None) -> torch.Tensor:
    q = torch.as_tensor(q)
    scale = torch.as_tensor(scale, dtype=torch.float32)
    zero_point = torch.as_tensor(zero_point)
    if scale.dim() > 0:
        shape = _broadcast_shape(q, axis)
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
    return (q.to(torch.int32) - zero_point.to(torch.int32)).to(torch.float32) * scale


def weight_groups(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """A [N, K] weight viewed as [N, K // group_size, group_size]: the groups that share a scale."""
    if w.dim() != 2 or w.shape[1] % group_size:
        raise UsageError(f"group_size {group_size} must divide the input size K of a [N, K] weight, got shape {list(w.shape)}")
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)


def quantize_groups(x, scale, zero_point, group_size: int, qmin: int, qmax: int, dtype: torch.dtype) -> torch.Tensor:
    """Per-group quantize of a [N, K] tensor with scale/zero_point of shape [N, K // group_size]."""
    x = torch.as_tensor(x, dtype=torch.float32)
    xg = weight_groups(x, group_size)
    q = torch.round(xg / scale.to(torch.float32).unsqueeze(-1)) + zero_point.unsqueeze(-1)
    return torch.clamp(q, qmin, qmax).to(dtype).reshape(x.shape)


def dequantize_groups(q, scale, zero_point, group_size: int) -> torch.Tensor:
    qg = weight_groups(torch.as_tensor(q), group_size).to(torch.int32)
    real = (qg - zero_point.to(torch.int32).unsqueeze(-1)).to(torch.float32) * scale.to(torch.float32).unsqueeze(-1)
    return real.reshape(q.shape)


def dynamic_qparams(x: torch.Tensor) -> QParams:
    """Run-time qparams of a whole activation tensor, as ONNX DynamicQuantizeLinear (and PyTorch's dynamic
    linear) compute them: uint8, per tensor, range [min(x, 0), max(x, 0)], zero point rounded half to even."""
    return qparams_from_range(x.min(), x.max(), DYNAMIC_SPEC)


def quantize(x, scale, zero_point, dtype: str = "uint8") -> torch.Tensor:
    """q = clamp(round(x / scale) + zero_point) in `dtype`'s range; out-of-range values saturate. NaN has
    no code and is refused."""
    spec = QSpec(dtype=dtype)
    scale, zero_point = _checked_qparams(scale, zero_point, spec)
    x = torch.as_tensor(x, dtype=torch.float32)
    if bool(torch.isnan(x).any()):
        raise UsageError("quantize input contains NaN, which has no integer code")
    return quantize_tensor(x, scale, zero_point, spec.qmin, spec.qmax, spec.torch_dtype)


def dequantize(q, scale, zero_point) -> torch.Tensor:
    """(q - zero_point) * scale for integer codes q (uint8 or int8)."""
    q = torch.as_tensor(q)
    dtype = {torch.uint8: "uint8", torch.int8: "int8"}.get(q.dtype)
    if dtype is None:
        raise UsageError(f"dequantize takes uint8 or int8 codes, got a {q.dtype} tensor")
    scale, zero_point = _checked_qparams(scale, zero_point, QSpec(dtype=dtype))
    return dequantize_tensor(q, scale, zero_point)


def _checked_qparams(scale, zero_point, spec: QSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """One scale (finite, > 0) and one integer zero point inside the dtype's range, as 0-d tensors."""
    scale_t, zp_t = torch.as_tensor(scale, dtype=torch.float64), torch.as_tensor(zero_point)
    if scale_t.numel() != 1 or zp_t.numel() != 1:
        raise UsageError(f"per-tensor quantize takes one scale and one zero point, got {scale_t.numel()} and "
                         f"{zp_t.numel()} values")
    s = float(scale_t)
    if not (math.isfinite(s) and 0 < s <= torch.finfo(torch.float32).max):
        raise UsageError(f"scale must be a positive finite float32, got {s!r}")
    z = float(zp_t)
    if isinstance(zero_point, bool) or not z.is_integer() or not spec.qmin <= z <= spec.qmax:
        raise UsageError(f"zero_point must be an integer in [{spec.qmin}, {spec.qmax}] for {spec.dtype}, got {zero_point!r}")
    if s * max(spec.qmax - z, z - spec.qmin) > torch.finfo(torch.float32).max:
        raise UsageError(f"scale {s!r} is too large: the codes of {spec.dtype} would dequantize beyond float32's range")
    return torch.tensor(s, dtype=torch.float32), torch.tensor(int(z), dtype=torch.int32)


def fixed_point_multiplier(real: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Represent each positive real multiplier as m * 2^-shift with m an int32 in [2^30, 2^31).

    Returns (multiplier int32, shift int8). `shift` is the total right shift applied to acc * m; it is
    clamped to [1, 62] so that acc (int32) * m (int32) stays inside int64 and the rounding term exists.
    """
    real = torch.as_tensor(real, dtype=torch.float64)
    if not bool(torch.all(real > 0)):
        raise ValueError("requantization multipliers must be positive")
    mant, exp = torch.frexp(real)  # real = mant * 2^exp, mant in [0.5, 1)
    m = torch.round(mant * (1 << MULTIPLIER_BITS)).to(torch.int64)
    overflow = m == (1 << MULTIPLIER_BITS)
    m = torch.where(overflow, m // 2, m)
    exp = torch.where(overflow, exp + 1, exp)
    shift = MULTIPLIER_BITS - exp.to(torch.int64)
    # Tiny multipliers: shift the mantissa down instead of shifting past 62.
    excess = torch.clamp(shift - 62, min=0)
    m = torch.div(m, 2**excess, rounding_mode="floor")
    shift = shift - excess
    too_large = shift < 1
    if bool(too_large.any()):
        raise ValueError(f"requantization multiplier {float(real.max()):.4g} is too large (>= 2^30)")
    return m.to(torch.int32), shift.to(torch.int8)


def shared_shift_multipliers(real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel int32 multipliers that share one right shift: real[c] ~= m[c] * 2^-shift.

    The shift is set by the largest multiplier (which gets the full 31 bits); smaller channels get
    proportionally smaller m[c]. One shift per layer keeps the SIMD epilogue simple and stores one
    byte per layer instead of per channel; the precision lost is below 2^-20 of the channel's range
    unless channel scales differ by more than 2^20.
    """
    real = torch.as_tensor(real, dtype=torch.float64).reshape(-1)
    _, shift = fixed_point_multiplier(real.max())
    m = torch.round(real * 2.0 ** int(shift)).to(torch.int64)
    return m.to(torch.int32), shift.reshape(1)


def rounding_shift(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(acc * multiplier + 2^(shift-1)) >> shift in int64: round half up, the integer graph's contract."""
    shift = shift.to(torch.int64)
    prod = acc.to(torch.int64) * multiplier.to(torch.int64)
    return torch.bitwise_right_shift(prod + torch.bitwise_left_shift(torch.ones_like(shift), shift - 1), shift)
