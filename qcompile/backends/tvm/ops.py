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
import tvm_ffi
from torch import fx
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
    torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
    torch.float32: "float32", torch.bool: "bool",
}


def tvm_dtype(dtype: torch.dtype) -> str:
    if dtype not in _DTYPES:
        raise NotImplementedError(f"dtype {dtype} has no TVM lowering")
    return _DTYPES[dtype]


def dtype_of(expr) -> str:
    """The dtype of a TIR expression or TE tensor (TVM 0.27 calls it `ty` on expressions)."""
    return str(expr.dtype if isinstance(expr, te.Tensor) else expr.ty)


def widen(x, dtype="int32"):
    return x.astype(dtype)  # a cast to the same type folds away


def _clamp_cast(v, qmin: int, qmax: int, dtype: torch.dtype):
    lo, hi = tir.const(qmin, dtype_of(v)), tir.const(qmax, dtype_of(v))
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
    return te.compute(q.shape, lambda *i: (widen(q(*i)) - zp).astype("float32") * tir.const(scale, "float32"), name="dequantize")


@converter(qc.dequantize_per_channel.default)
def _dequantize_channel(node, q, scales, zps, axis):
    nd = len(q.shape)
    return te.compute(
        q.shape,
        lambda *i: (widen(q(*i)) - _channel(zps, i, axis, nd)).astype("float32") * _channel(scales, i, axis, nd),
        name="dequantize",
    )


# ------------------------------------------------------------------ accumulators
def product16(x, x_zp: int, w):
    """(x - x_zp) * w in int16: exact for 8-bit operands (|.| <= 255 * 128 = 32640), and 16-bit lanes
    multiply twice as wide and much faster than 32-bit ones (vpmullw vs vpmulld)."""
    return (widen(x, "int16") - tir.const(x_zp, "int16")) * widen(w, "int16")


@converter(qc.linear_int.default)
def _linear(node, x, w, bias, x_zp, zp_folded):
    k = te.reduce_axis((0, w.shape[1]), "k")
    sub = 0 if zp_folded else x_zp
    out_shape = (*x.shape[:-1], w.shape[0])

    def body(*i):
        acc = te.sum((widen(x(*i[:-1], k)) - sub) * widen(w[i[-1], k]), axis=k)
        return acc

    acc = te.compute(out_shape, body, name="linear_int")
    if bias is None:
        return acc
    return te.compute(out_shape, lambda *i: acc(*i) + bias[i[-1]], name="linear_bias")


# ------------------------------------------------------------------ Linear with float activations
def _linear_float_out(x, w, bias, name: str, element) -> te.Tensor:
    """y[..., n] = sum_k element(x[..., k], n, k) (+ bias[n]) in float32, for a [N, K] weight w."""
    k = te.reduce_axis((0, x.shape[-1]), "k")
    out_shape = (*x.shape[:-1], w.shape[0])
    y = te.compute(out_shape, lambda *i: te.sum(element(x(*i[:-1], k), i[-1], k), axis=k), name=name)
    if bias is None:
        return y
    return te.compute(out_shape, lambda *i: y(*i) + bias[i[-1]], name=f"{name}_bias")


@converter(qc.linear_weight_only.default)
def _linear_weight_only(node, x, w, scale, bias, group_size):
    """Weights dequantized as they are read: w[n, k] * scale[n, k // group_size]."""
    def element(xv, n, k):
        return xv * (w[n, k].astype("float32") * scale[n, tir.floordiv(k, group_size)])

    return _linear_float_out(x, w, bias, "linear_weight_only", element)


_F32_EPS = float(torch.finfo(torch.float32).eps)  # math.qparams_from_range's smallest scale


def _dynamic_qparams(x):
    """(scale, zero point) of x as one-element tensors, as math.dynamic_qparams computes them: uint8 over
    [min(x, 0), max(x, 0)], zero point clamp(-round_half_even(lo / scale), 0, 255)."""
    def extreme(reducer, name):
        axes = [te.reduce_axis((0, d), f"r{j}") for j, d in enumerate(x.shape)]
        return te.compute((1,), lambda _: reducer(x(*axes), axis=axes), name=name)

    xmin, xmax = extreme(te.min, "x_min"), extreme(te.max, "x_max")
    zero = tir.const(0.0, "float32")

    def scale_of(_):
        span = tir.max(xmax[0], zero) - tir.min(xmin[0], zero)
        return tir.max(span / tir.const(255.0, "float32"), tir.const(_F32_EPS, "float32"))

    scale = te.compute((1,), scale_of, name="x_scale")

    def zp_of(_):
        return _clamp_cast(zero - tir.nearbyint(tir.min(xmin[0], zero) / scale[0]), 0, 255, torch.int32)

    return scale, te.compute((1,), zp_of, name="x_zero_point")


@converter(qc.linear_dynamic.default)
def _linear_dynamic(node, x, w, w_scale, bias):
    """The input quantized with its own run-time qparams, an exact int32 accumulation, then the float
    epilogue acc * (sx * w_scale[n]) + bias[n] (ops.linear_dynamic)."""
    scale, zp = _dynamic_qparams(x)
    q = te.compute(
        x.shape, lambda *i: _clamp_cast(tir.nearbyint(x(*i) / scale[0]) + zp[0].astype("float32"), 0, 255, torch.uint8),
        name="x_quantized",
    )
    k = te.reduce_axis((0, x.shape[-1]), "k")
    out_shape = (*x.shape[:-1], w.shape[0])
    acc = te.compute(out_shape, lambda *i: te.sum((widen(q(*i[:-1], k)) - zp[0]) * widen(w[i[-1], k]), axis=k), name="linear_dynamic_acc")

    def epilogue(*i):
        y = acc(*i).astype("float32") * (scale[0] * w_scale[i[-1]])
        return y if bias is None else y + bias[i[-1]]

    return te.compute(out_shape, epilogue, name="linear_dynamic")


def is_one(d) -> bool:
    return isinstance(d, (int, tir.IntImm)) and int(d) == 1


def broadcast_batch(a_batch: list, b_batch: list) -> list:
    """torch.matmul's batch broadcast (right-aligned); symbolic sizes that are not 1 are taken as equal."""
    n = max(len(a_batch), len(b_batch))
    a_batch = [1] * (n - len(a_batch)) + list(a_batch)
    b_batch = [1] * (n - len(b_batch)) + list(b_batch)
    return [b if is_one(a) else a for a, b in zip(a_batch, b_batch)]


def operand_batch(out_index, t_batch: list) -> list:
    """An operand's batch coordinates at the output's batch coordinates `out_index` (right-aligned; its
    dims of size 1 read 0)."""
    lead = len(out_index) - len(t_batch)
    return [tir.const(0, str(out_index[lead + j].ty)) if is_one(d) else out_index[lead + j] for j, d in enumerate(t_batch)]


@converter(qc.matmul_int.default)
def _matmul(node, a, b, a_zp, b_zp):
    *a_batch, m, depth = a.shape
    *b_batch, _, n = b.shape
    k = te.reduce_axis((0, depth), "k")

    def body(*i):
        left = a(*operand_batch(i[:-2], a_batch), i[-2], k)
        right = b(*operand_batch(i[:-2], b_batch), k, i[-1])
        return te.sum((widen(left) - a_zp) * (widen(right) - b_zp), axis=k)

    return te.compute((*broadcast_batch(a_batch, b_batch), m, n), body, name="matmul_int")


@converter(qc.mul_int.default)
def _mul(node, a, b, a_zp, b_zp):
    return topi.multiply(topi.subtract(cast(a), a_zp), topi.subtract(cast(b), b_zp))


def cast(t, dtype="int32"):
    return topi.cast(t, dtype)


@converter(qc.sum_int.default)
def _sum(node, x, x_zp, dims, keepdim):
    shifted = topi.subtract(cast(x), x_zp)
    return topi.sum(shifted, axis=[d % len(x.shape) for d in dims], keepdims=keepdim)


# ------------------------------------------------------------------ requantization
def high_word_rounding(shift: int) -> tuple[int, int]:
    """The rounding term 2^(shift-1) of a shift >= 32, split into (added to the 64-bit product, added to
    its high dword): floor(p / 2^s) == floor(floor(p / 2^32) / 2^(s - 32)), and for s >= 33 the term is a
    multiple of 2^32, so it moves whole to the int32 side."""
    return (1 << 31, 0) if shift == 32 else (0, 1 << (shift - 33))


def matmul_operands_ok(mm: fx.Node) -> bool:
    """Operands of a `matmul_int` the hand-written kernels take: tensors of at least 2 dims, 8-bit, with zero
    points their dtype can hold (A is padded with its own)."""
    a, b, a_zp, b_zp = mm.args
    return all(isinstance(x, fx.Node) and x.meta["val"].ndim >= 2 and x.meta["val"].dtype in (torch.uint8, torch.int8)
               and isinstance(zp, int) and torch.iinfo(x.meta["val"].dtype).min <= zp <= torch.iinfo(x.meta["val"].dtype).max
               for x, zp in ((a, a_zp), (b, b_zp)))


def _rounding_shift(v64, m, s):
    one = tir.const(1, "int64")
    s64 = s.astype("int64")
    return tir.shift_right(v64 * m.astype("int64") + tir.shift_left(one, s64 - one), s64)


def _high_word_requantize(acc32, m, shift: int):
    """floor((acc * m + 2^(shift-1)) / 2^shift) for shift >= 32 without 64-bit shifts or clamps: take the
    high dword of the 64-bit product (LLVM emits a 32x32->64 multiply and a shuffle), finish in int32,
    the rounding term split as in the GEMM kernel's epilogue (cpu/gemm_kernel.py)."""
    rnd64, rnd32 = high_word_rounding(shift)
    prod = acc32.astype("int64") * m.astype("int64") + tir.const(rnd64, "int64")
    high = tir.shift_right(prod, tir.const(32, "int64")).astype("int32")
    return tir.shift_right(high + tir.const(rnd32, "int32"), tir.const(shift - 32, "int32"))


@converter(qc.requantize_fixed.default)
def _requantize_fixed(node, x, x_zp, mult, shift, axis, out_zp, qmin, qmax, dtype):
    """`shift` is a Python int when the lowering found it constant (scalar_constants), else a tensor."""
    nd = len(x.shape)
    if isinstance(shift, int) and shift >= 32 and x_zp == 0 and dtype_of(x) == "int32" and abs(out_zp) < 2**29:
        def body(*i):
            y = _high_word_requantize(x(*i), _channel(mult, i, axis, nd), shift) + tir.const(out_zp, "int32")
            return _clamp_cast(y, qmin, qmax, dtype)

        return te.compute(x.shape, body, name="requantize")

    def body(*i):
        s = tir.const(shift, "int64") if isinstance(shift, int) else _channel(shift, i, axis, nd)
        v = x(*i).astype("int64") - tir.const(x_zp, "int64")
        y = _rounding_shift(v, _channel(mult, i, axis, nd), s) + tir.const(out_zp, "int64")
        return _clamp_cast(y, qmin, qmax, dtype)

    return te.compute(x.shape, body, name="requantize")


# Arguments a converter takes as a Python int when the graph holds them as one-element constants.
SCALAR_CONSTANTS = {qc.requantize_fixed.default: (3,)}


@converter(qc.add_fixed.default)
def _add_fixed(node, a, a_zp, a_mult, b, b_zp, b_mult, shift, out_zp, qmin, qmax, dtype):
    same = tvm_ffi.structural_equal(list(a.shape), list(b.shape))
    shape = a.shape if same else broadcast_shape(a.shape, b.shape)

    def body(*i):
        ai, bi = (a(*i), b(*i)) if same else (broadcast_read(a, i), broadcast_read(b, i))
        va = (ai.astype("int64") - tir.const(a_zp, "int64")) * tir.const(a_mult, "int64")
        vb = (bi.astype("int64") - tir.const(b_zp, "int64")) * tir.const(b_mult, "int64")
        acc = va + vb + tir.const(1 << (shift - 1), "int64")
        return _clamp_cast(tir.shift_right(acc, tir.const(shift, "int64")) + tir.const(out_zp, "int64"), qmin, qmax, dtype)

    return te.compute(shape, body, name="add_fixed")


def _is_one(d) -> bool:
    return isinstance(d, (int, tir.IntImm)) and int(d) == 1


def broadcast_shape(a: list, b: list) -> list:
    """NumPy broadcasting of two static or symbolic shapes (a 1 stretches; otherwise the sizes agree)."""
    nd = max(len(a), len(b))
    pa, pb = [1] * (nd - len(a)) + list(a), [1] * (nd - len(b)) + list(b)
    return [y if _is_one(x) else x for x, y in zip(pa, pb)]


def broadcast_read(t: te.Tensor, i: tuple):
    """t at output index i under broadcasting: leading dims dropped, size-1 dims read at 0."""
    offset = len(i) - len(t.shape)
    return t(*[0 if _is_one(d) else i[offset + k] for k, d in enumerate(t.shape)])


@converter(qc.lut.default)
def _lut(node, x, table, qmin_in):
    return te.compute(x.shape, lambda *i: table[widen(x(*i)) - qmin_in], name="lut")


# TVM calls a kernel that loads through a computed index opaque, and fuses nothing into it: a lookup
# table is element-wise all the same (one load of the small table per element), so it joins its
# producer's kernel (an LSTM's gates: quantize -> sigmoid table, one kernel instead of two per gate).
_INJECTIVE = 2  # tvm.relax's OpPatternKind kInjective
PRIMFUNC_ATTRS = {qc.lut.default: {"op_pattern": _INJECTIVE}}


# ------------------------------------------------------------------ data movement on integer tensors
# Output sizes come from the op's arguments and the input's TE shape, never from node.meta (the example's
# sizes): with dynamic_shapes they are expressions of the module's symbolic dims.
def size_product(sizes):
    """The product of (static or symbolic) sizes, simplified: `s0*12//12` would not match `s0` elsewhere."""
    return _SIMPLIFY.simplify(functools.reduce(operator.mul, sizes, tir.const(1, "int64")))


@converter(aten.view.default, aten.reshape.default)
def _reshape(node, x, shape):
    shape = list(shape)
    wild = [i for i, d in enumerate(shape) if isinstance(d, int) and d == -1]
    if wild:
        known = size_product(d for i, d in enumerate(shape) if i != wild[0])
        shape[wild[0]] = _SIMPLIFY.simplify(tir.floordiv(size_product(x.shape), known))
    return topi.reshape(x, shape)


@converter(aten.flatten.using_ints)
def _flatten(node, x, start=0, end=-1):
    dims = list(x.shape)
    s, e = start % len(dims), end % len(dims)
    return topi.reshape(x, [*dims[:s], size_product(dims[s:e + 1]), *dims[e + 1:]])


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


@converter(aten.where.ScalarOther)
def _where_scalar_other(node, cond, x, other):
    """where(cond, x, scalar) (BERT's eager attention mask); TVM's importer has no ScalarOther."""
    fill = te.compute((), lambda: tir.const(other, str(x.dtype)), name="where_other")
    return topi.where(cond, x, fill)


@converter(aten.amax.default)
def _amax(node, x, dims=(), keepdim=False):
    """amax over `dims` (all when empty); TVM's importer has no amax."""
    axes = [d % len(x.shape) for d in dims] or None
    return topi.max(x, axis=axes, keepdims=keepdim)


@converter(aten.embedding.default)
def _embedding(node, weight, indices, *rest):
    return topi.take(weight, indices, axis=0)
