"""Quantized ops as torch.library custom ops: the executable meaning of every quantized graph.

Two families:
- q/dq ops (`quantize_per_tensor`, ...) make the fake-quantized graph; they mirror PyTorch's
  `quantized_decomposed` ops, which fuse-qdq also understands.
- integer ops (`conv2d_int`, `requantize_fixed`, ...) make the integer graph. Their bodies are the
  reference semantics that every backend must reproduce bit for bit. Accumulation is exact: int8 x int8
  products are summed in float64, exact for any realistic reduction length (< 2^53 / 2^16 terms), and the
  result is returned as int32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.library import custom_op

from .math import (
    dequantize_groups,
    dequantize_tensor,
    dynamic_qparams,
    quantize_groups,
    quantize_tensor,
    rounding_shift,
)

_NS = "qcompile"


def _op(name: str):
    return custom_op(f"{_NS}::{name}", mutates_args=())


# ---------------------------------------------------------------- q / dq (fake-quant graph and borders)
@_op("quantize_per_tensor")
def quantize_per_tensor(x: Tensor, scale: float, zero_point: int, qmin: int, qmax: int, dtype: torch.dtype) -> Tensor:
    return quantize_tensor(x, scale, zero_point, qmin, qmax, dtype)


@_op("dequantize_per_tensor")
def dequantize_per_tensor(q: Tensor, scale: float, zero_point: int) -> Tensor:
    return dequantize_tensor(q, scale, zero_point)


@_op("quantize_per_channel")
def quantize_per_channel(
    x: Tensor, scales: Tensor, zero_points: Tensor, axis: int, qmin: int, qmax: int, dtype: torch.dtype
) -> Tensor:
    return quantize_tensor(x, scales, zero_points, qmin, qmax, dtype, axis=axis)


@_op("dequantize_per_channel")
def dequantize_per_channel(q: Tensor, scales: Tensor, zero_points: Tensor, axis: int) -> Tensor:
    return dequantize_tensor(q, scales, zero_points, axis=axis)


@_op("quantize_per_group")
def quantize_per_group(
    x: Tensor, scales: Tensor, zero_points: Tensor, group_size: int, qmin: int, qmax: int, dtype: torch.dtype
) -> Tensor:
    """[N, K] x with scales/zero_points [N, K // group_size]: element (n, k) uses group k // group_size."""
    return quantize_groups(x, scales, zero_points, group_size, qmin, qmax, dtype)


@_op("dequantize_per_group")
def dequantize_per_group(q: Tensor, scales: Tensor, zero_points: Tensor, group_size: int) -> Tensor:
    return dequantize_groups(q, scales, zero_points, group_size)


@_op("fake_quantize_dynamic")
def fake_quantize_dynamic(x: Tensor) -> Tensor:
    """dequantize(quantize(x)) with the uint8 per-tensor qparams of this very x (math.dynamic_qparams):
    the fake-quant form of an activation quantized at run time."""
    qp = dynamic_qparams(x)
    q = quantize_tensor(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax, qp.spec.torch_dtype)
    return dequantize_tensor(q, qp.scale, qp.zero_point)


# ---------------------------------------------------------------- integer accumulators (-> int32)
def _f64(x: Tensor) -> Tensor:
    return x.to(torch.float64)


def _i32(acc: Tensor) -> Tensor:
    return acc.round().to(torch.int32)


@_op("conv2d_int")
def conv2d_int(
    x: Tensor, w: Tensor, bias: Tensor | None, x_zp: int, zp_folded: bool,
    stride: list[int], padding: list[int], dilation: list[int], groups: int,
) -> Tensor:
    """sum((x - x_zp) * w) + bias over each window; padding holds x_zp, i.e. real zero.

    zp_folded: `bias` already contains -x_zp * sum(w), so the sum is over raw x (padded with x_zp).
    """
    xf = F.pad(_f64(x), [padding[1], padding[1], padding[0], padding[0]], value=float(x_zp))
    if not zp_folded:
        xf = xf - x_zp
    acc = F.conv2d(xf, _f64(w), None, stride, 0, dilation, groups)
    if bias is not None:
        acc = acc + _f64(bias).reshape(1, -1, 1, 1)
    return _i32(acc)


@_op("linear_int")
def linear_int(x: Tensor, w: Tensor, bias: Tensor | None, x_zp: int, zp_folded: bool) -> Tensor:
    xf = _f64(x) if zp_folded else _f64(x) - x_zp
    acc = F.linear(xf, _f64(w), None if bias is None else _f64(bias))
    return _i32(acc)


@_op("linear_dynamic")
def linear_dynamic(x: Tensor, w: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """Linear with its float input quantized at run time (float32 out), as PyTorch's dynamic linear and
    ONNX DynamicQuantizeLinear + MatMulInteger do it:

    sx, zx = math.dynamic_qparams(x)                  one uint8 scale/zero point for the whole tensor
    qx     = clamp(round_half_even(x / sx) + zx, 0, 255)
    acc    = sum_k (qx[..., k] - zx) * w[n, k]          int32, exact: the bit-exact part
    y      = float32(acc) * (sx * w_scale[n]) + bias[n]  float32: backends match to float tolerance

    `w` holds int8 codes (int4 values allowed) with symmetric per-output-channel scales `w_scale` [N].
    """
    qp = dynamic_qparams(x)
    q = quantize_tensor(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax, qp.spec.torch_dtype)
    acc = linear_int(q, w, None, int(qp.zero_point), False)
    y = acc.to(torch.float32) * (qp.scale * w_scale.to(torch.float32))
    return y if bias is None else y + bias.to(torch.float32)


# ---------------------------------------------------------------- weight-only (float activations)
@_op("linear_weight_only")
def linear_weight_only(x: Tensor, w: Tensor, scale: Tensor, bias: Tensor | None, group_size: int) -> Tensor:
    """y = x @ dequantize(w).T + bias in float32, where dequantize(w)[n, k] = w[n, k] * scale[n, k // group_size].

    `w` [N, K] holds int8 codes (int4 values allowed), symmetric (zero point 0); `scale` is [N, K // group_size]
    (per-channel weights: group_size = K, scale [N, 1]). Only the weights are quantized, so nothing here
    is integer arithmetic: backends match to float tolerance (summation order is theirs).
    """
    return F.linear(x.to(torch.float32), dequantize_groups(w, scale, torch.zeros_like(scale, dtype=torch.int32), group_size), bias)


@_op("matmul_int")
def matmul_int(a: Tensor, b: Tensor, a_zp: int, b_zp: int) -> Tensor:
    return _i32(torch.matmul(_f64(a) - a_zp, _f64(b) - b_zp))


@_op("mul_int")
def mul_int(a: Tensor, b: Tensor, a_zp: int, b_zp: int) -> Tensor:
    return (a.to(torch.int32) - a_zp) * (b.to(torch.int32) - b_zp)


@_op("sum_int")
def sum_int(x: Tensor, x_zp: int, dims: list[int], keepdim: bool) -> Tensor:
    return (x.to(torch.int64) - x_zp).sum(dim=dims, keepdim=keepdim).to(torch.int32)


@_op("avg_pool2d_int")
def avg_pool2d_int(x: Tensor, x_zp: int, kernel: list[int], stride: list[int], padding: list[int], ceil_mode: bool) -> Tensor:
    """Window sums of (x - x_zp); padding counts as real zero (count_include_pad semantics)."""
    xf = _f64(x) - x_zp
    k = kernel[0] * kernel[1]
    return _i32(F.avg_pool2d(xf, kernel, stride, padding, ceil_mode, count_include_pad=True) * k)


@_op("max_pool2d_int")
def max_pool2d_int(
    x: Tensor, kernel: list[int], stride: list[int], padding: list[int], dilation: list[int], ceil_mode: bool
) -> Tensor:
    y = F.max_pool2d(x.to(torch.float32), kernel, stride, padding, dilation, ceil_mode)
    return y.to(x.dtype)


# ---------------------------------------------------------------- requantization (-> int8 / uint8)
def _per_channel(t: Tensor, like: Tensor, axis: int) -> Tensor:
    if t.numel() == 1:
        return t.reshape(())
    shape = [1] * like.dim()
    shape[axis] = -1
    return t.reshape(shape)


@_op("requantize")
def requantize(
    x: Tensor, x_zp: int, scale: Tensor, axis: int, out_zp: int, qmin: int, qmax: int, dtype: torch.dtype
) -> Tensor:
    """Float form (before fold-scales): clamp(round((x - x_zp) * scale) + out_zp)."""
    y = torch.round((_f64(x) - x_zp) * _per_channel(_f64(scale), x, axis)) + out_zp
    return torch.clamp(y, qmin, qmax).to(dtype)


@_op("requantize_fixed")
def requantize_fixed(
    x: Tensor, x_zp: int, multiplier: Tensor, shift: Tensor, axis: int,
    out_zp: int, qmin: int, qmax: int, dtype: torch.dtype,
) -> Tensor:
    """Integer form: clamp(((x - x_zp) * m + 2^(s-1)) >> s + out_zp), all in int64."""
    acc = x.to(torch.int64) - x_zp
    y = rounding_shift(acc, _per_channel(multiplier, x, axis), _per_channel(shift, x, axis)) + out_zp
    return torch.clamp(y, qmin, qmax).to(dtype)


@_op("add_q")
def add_q(
    a: Tensor, a_scale: float, a_zp: int, b: Tensor, b_scale: float, b_zp: int,
    out_scale: float, out_zp: int, qmin: int, qmax: int, dtype: torch.dtype,
) -> Tensor:
    """Float form of a quantized add: inputs with their own scales, one rounding at the end."""
    y = ((_f64(a) - a_zp) * a_scale + (_f64(b) - b_zp) * b_scale) / out_scale
    return torch.clamp(torch.round(y) + out_zp, qmin, qmax).to(dtype)


@_op("add_fixed")
def add_fixed(
    a: Tensor, a_zp: int, a_mult: int, b: Tensor, b_zp: int, b_mult: int, shift: int,
    out_zp: int, qmin: int, qmax: int, dtype: torch.dtype,
) -> Tensor:
    """Integer add: ((a - a_zp) * a_mult + (b - b_zp) * b_mult + 2^(shift-1)) >> shift + out_zp."""
    acc = (a.to(torch.int64) - a_zp) * a_mult + (b.to(torch.int64) - b_zp) * b_mult
    y = torch.bitwise_right_shift(acc + (1 << (shift - 1)), shift) + out_zp
    return torch.clamp(y, qmin, qmax).to(dtype)


@_op("lut")
def lut(x: Tensor, table: Tensor, qmin_in: int) -> Tensor:
    """Element-wise function of a quantized tensor as a lookup table indexed by x - qmin_in."""
    return table[(x.to(torch.int64) - qmin_in)]
