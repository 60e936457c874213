"""TE definitions of qcompile's integer ops (and the few float ops around them), one converter per fx target.

Each converter receives the fx node, its tensor arguments already as TE tensors (constants included)
and returns a TE tensor. Semantics follow qcompile/quant/ops.py exactly: integer accumulation in int32,
requantization in int64 with round-half-up shifts, quantize rounding half to even (nearbyint).
"""
from __future__ import annotations

import functools
import operator
from typing import Callable

import torch
import tvm
from tvm import te, topi
from tvm import tirx as tir

qc = torch.ops.qcompile
aten = torch.ops.aten

CONVERTERS: dict[object, Callable] = {}
_SIMPLIFY = tvm.sym.Analyzer()


def converter(*targets):
    def deco(fn):
        for t in targets:
            CONVERTERS[t] = fn
        return fn
    return deco


_DTYPES = {
    torch.uint8: "uint8", torch.int8: "int8", torch.int32: "int32", torch.int64: "int64",
    torch.float32: "float32", torch.bool: "bool",
}


def tvm_dtype(dtype: torch.dtype) -> str:
    if dtype not in _DTYPES:
        raise NotImplementedError(f"dtype {dtype} has no TVM lowering")
    return _DTYPES[dtype]


def _dtype(expr) -> str:
    """The dtype of a TIR expression or TE tensor (TVM 0.27 calls it `ty` on expressions)."""
    return str(expr.dtype if isinstance(expr, te.Tensor) else expr.ty)


def _i(x, dtype="int32"):
    return x.astype(dtype)  # a cast to the same type folds away


def _clamp_cast(v, qmin: int, qmax: int, dtype: torch.dtype):
    lo, hi = tir.const(qmin, _dtype(v)), tir.const(qmax, _dtype(v))
    return tir.max(tir.min(v, hi), lo).astype(tvm_dtype(dtype))


def _channel(t: te.Tensor, idx, axis: int, ndim: int):
    """Element of a per-channel (or single-element) parameter for output index `idx`."""
    if t.shape[0] == 1:
        return t[0]
    return t[idx[axis % ndim]]


# ------------------------------------------------------------------ borders: float <-> int
@converter(qc.quantize_per_tensor.default)
def _quantize(node, x, scale, zp, qmin, qmax, dtype):
    s = tir.const(scale, "float32")
    return te.compute(
        x.shape, lambda *i: _clamp_cast(tir.nearbyint(x(*i) / s) + tir.const(float(zp), "float32"), qmin, qmax, dtype),
        name="quantize",
    )


@converter(qc.dequantize_per_tensor.default)
def _dequantize(node, q, scale, zp):
    return te.compute(q.shape, lambda *i: (_i(q(*i)) - zp).astype("float32") * tir.const(scale, "float32"), name="dequantize")


@converter(qc.dequantize_per_channel.default)
def _dequantize_channel(node, q, scales, zps, axis):
    nd = len(q.shape)
    return te.compute(
        q.shape,
        lambda *i: (_i(q(*i)) - _channel(zps, i, axis, nd)).astype("float32") * _channel(scales, i, axis, nd),
        name="dequantize",
    )


# ------------------------------------------------------------------ accumulators
def _product16(x, x_zp: int, w):
    """(x - x_zp) * w in int16: exact for 8-bit operands (|.| <= 255 * 128 = 32640), and 16-bit lanes
    multiply twice as wide and much faster than 32-bit ones (vpmullw vs vpmulld)."""
    return (_i(x, "int16") - tir.const(x_zp, "int16")) * _i(w, "int16")


@converter(qc.conv2d_int.default)
def _conv2d(node, x, w, bias, x_zp, zp_folded, stride, padding, dilation, groups):
    n, cin, h, wd = x.shape
    cout, cin_g, kh, kw = w.shape
    cout_g = cout // groups
    ph, pw = padding
    xp = topi.nn.pad(x, [0, 0, ph, pw], [0, 0, ph, pw], pad_value=tir.const(x_zp, _dtype(x)), name="pad")
    sub = 0 if zp_folded else x_zp
    oh = (h + 2 * ph - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * pw - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    rc, ry, rx = te.reduce_axis((0, cin_g), "rc"), te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx")

    def body(b, co, y, xx):
        ci = (co // cout_g) * cin_g + rc
        pix = xp[b, ci, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1]]
        return te.sum(_i(_product16(pix, sub, w[co, rc, ry, rx])), axis=[rc, ry, rx])

    acc = te.compute((n, cout, oh, ow), body, name="conv2d_int")
    if bias is None:
        return acc
    return te.compute(acc.shape, lambda b, co, y, xx: acc[b, co, y, xx] + bias[co], name="conv2d_bias")


@converter(qc.linear_int.default)
def _linear(node, x, w, bias, x_zp, zp_folded):
    k = te.reduce_axis((0, w.shape[1]), "k")
    sub = 0 if zp_folded else x_zp
    out_shape = (*x.shape[:-1], w.shape[0])

    def body(*i):
        acc = te.sum((_i(x(*i[:-1], k)) - sub) * _i(w[i[-1], k]), axis=k)
        return acc

    acc = te.compute(out_shape, body, name="linear_int")
    if bias is None:
        return acc
    return te.compute(out_shape, lambda *i: acc(*i) + bias[i[-1]], name="linear_bias")


@converter(qc.matmul_int.default)
def _matmul(node, a, b, a_zp, b_zp):
    k = te.reduce_axis((0, a.shape[-1]), "k")
    batch = [a.shape[d] if a.shape[d] != 1 else b.shape[d] for d in range(len(a.shape) - 2)]
    shape = (*batch, a.shape[-2], b.shape[-1])

    def pick(t, idx):
        return [0 if t.shape[d] == 1 else idx[d] for d in range(len(idx))]

    def body(*i):
        bi = list(i[:-2])
        return te.sum(
            (_i(a(*pick(a, bi), i[-2], k)) - a_zp) * (_i(b(*pick(b, bi), k, i[-1])) - b_zp), axis=k
        )

    return te.compute(shape, body, name="matmul_int")


@converter(qc.mul_int.default)
def _mul(node, a, b, a_zp, b_zp):
    return topi.multiply(topi.subtract(_cast(a), a_zp), topi.subtract(_cast(b), b_zp))


def _cast(t, dtype="int32"):
    return topi.cast(t, dtype)


@converter(qc.sum_int.default)
def _sum(node, x, x_zp, dims, keepdim):
    shifted = topi.subtract(_cast(x), x_zp)
    return topi.sum(shifted, axis=[d % len(x.shape) for d in dims], keepdims=keepdim)


@converter(qc.avg_pool2d_int.default)
def _avg_pool_sum(node, x, x_zp, kernel, stride, padding, ceil_mode):
    if ceil_mode:
        raise NotImplementedError("avg_pool2d with ceil_mode")
    shifted = topi.subtract(_cast(x), x_zp)
    padded = topi.nn.pad(shifted, [0, 0, padding[0], padding[1]], [0, 0, padding[0], padding[1]], pad_value=0)
    n, c, h, w = padded.shape
    oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    ry, rx = te.reduce_axis((0, kernel[0]), "ry"), te.reduce_axis((0, kernel[1]), "rx")
    return te.compute(
        (n, c, oh, ow), lambda b, ch, y, xx: te.sum(padded[b, ch, y * stride[0] + ry, xx * stride[1] + rx], axis=[ry, rx]),
        name="avg_pool_sum",
    )


@converter(qc.max_pool2d_int.default)
def _max_pool(node, x, kernel, stride, padding, dilation, ceil_mode):
    return topi.nn.pool2d(x, kernel, stride, dilation, [padding[0], padding[1], padding[0], padding[1]], "max", ceil_mode, "NCHW")


# ------------------------------------------------------------------ requantization
def _rounding_shift(v64, m, s):
    one = tir.const(1, "int64")
    s64 = s.astype("int64")
    return tir.shift_right(v64 * m.astype("int64") + tir.shift_left(one, s64 - one), s64)


@converter(qc.requantize_fixed.default)
def _requantize_fixed(node, x, x_zp, mult, shift, axis, out_zp, qmin, qmax, dtype):
    nd = len(x.shape)

    def body(*i):
        v = x(*i).astype("int64") - tir.const(x_zp, "int64")
        y = _rounding_shift(v, _channel(mult, i, axis, nd), _channel(shift, i, axis, nd)) + tir.const(out_zp, "int64")
        return _clamp_cast(y, qmin, qmax, dtype)

    return te.compute(x.shape, body, name="requantize")


@converter(qc.add_fixed.default)
def _add_fixed(node, a, a_zp, a_mult, b, b_zp, b_mult, shift, out_zp, qmin, qmax, dtype):
    def body(*i):
        va = (a(*i).astype("int64") - tir.const(a_zp, "int64")) * tir.const(a_mult, "int64")
        vb = (b(*i).astype("int64") - tir.const(b_zp, "int64")) * tir.const(b_mult, "int64")
        acc = va + vb + tir.const(1 << (shift - 1), "int64")
        return _clamp_cast(tir.shift_right(acc, tir.const(shift, "int64")) + tir.const(out_zp, "int64"), qmin, qmax, dtype)

    return te.compute(a.shape, body, name="add_fixed")


@converter(qc.lut.default)
def _lut(node, x, table, qmin_in):
    return te.compute(x.shape, lambda *i: table[_i(x(*i)) - qmin_in], name="lut")


# ------------------------------------------------------------------ data movement on integer tensors
# Output sizes come from the op's arguments and the input's TE shape, never from node.meta (the example's
# sizes): with dynamic_shapes they are expressions of the module's symbolic dims.
def _product(sizes):
    return functools.reduce(operator.mul, sizes, tir.const(1, "int64"))


@converter(aten.view.default, aten.reshape.default)
def _reshape(node, x, shape):
    shape = list(shape)
    wild = [i for i, d in enumerate(shape) if isinstance(d, int) and d == -1]
    if wild:
        known = _product(d for i, d in enumerate(shape) if i != wild[0])
        shape[wild[0]] = _SIMPLIFY.simplify(tir.floordiv(_product(x.shape), known))
    return topi.reshape(x, shape)


@converter(aten.flatten.using_ints)
def _flatten(node, x, start=0, end=-1):
    dims = list(x.shape)
    s, e = start % len(dims), end % len(dims)
    return topi.reshape(x, [*dims[:s], _SIMPLIFY.simplify(_product(dims[s:e + 1])), *dims[e + 1:]])


@converter(aten.to.device, aten.to.dtype, aten._to_copy.default)
def _to(node, x, *rest):
    """Device moves are no-ops here; what remains is the cast to the node's output dtype."""
    return topi.cast(x, tvm_dtype(node.meta["val"].dtype))


@converter(aten.permute.default)
def _permute(node, x, dims):
    return topi.transpose(x, [d % len(x.shape) for d in dims])


@converter(aten.transpose.int)
def _transpose(node, x, d0, d1):
    axes = list(range(len(x.shape)))
    axes[d0 % len(axes)], axes[d1 % len(axes)] = axes[d1 % len(axes)], axes[d0 % len(axes)]
    return topi.transpose(x, axes)


@converter(aten.clamp.default)
def _clamp(node, x, lo=None, hi=None):
    lo = lo if lo is not None else -(2**31)
    hi = hi if hi is not None else 2**31 - 1
    return topi.clip(x, lo, hi)


@converter(aten.cat.default)
def _cat(node, tensors, dim=0):
    return topi.concatenate(tensors, axis=dim % len(tensors[0].shape))


@converter(aten.embedding.default)
def _embedding(node, weight, indices, *rest):
    return topi.take(weight, indices, axis=0)
