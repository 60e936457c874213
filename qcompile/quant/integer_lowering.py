"""Integer lowerings used by fuse-qdq: one function per op kind, registered by the rule's `kind`.

Each receives a Match (the float op, its fused activation, quantized inputs and weights, the output
QParams) and builds the integer nodes in the float-requantize form that fold-scales later turns into
fixed point. Returning None leaves the pattern in float.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ..ir import meta, shapes
from ..ir.qspec import QParams
from ..ir.rewrite import Rewriter, constant
from .math import dequantize_tensor, quantize_tensor
from .rules import activation_range

aten = torch.ops.aten
qc = torch.ops.qcompile


@dataclass
class Match:
    op: fx.Node  # the float op
    activation: fx.Node | None  # relu/hardtanh/clamp fused into the requantize clamp
    q: fx.Node | None  # the quantize node whose value the lowering replaces (None: float output)
    inputs: list[tuple[fx.Node, QParams | None]]  # integer producers of the activation inputs (float ones: None)
    weights: list[tuple[torch.Tensor, QParams]]  # integer weight tensors
    out: QParams | None  # None: the op's float output is kept, computed from the int32 accumulator
    form: str = "static"  # how the activation inputs arrive (qdq.activation_source): picks the lowering

    @property
    def last(self) -> fx.Node:
        return self.activation or self.op

    @property
    def anchor(self) -> fx.Node:
        return self.q if self.q is not None else self.op

    def out_range(self) -> tuple[int, int]:
        """The output clamp: the dtype's range narrowed by the fused activation's bounds."""
        spec, (scale, zp) = self.out.spec, self.out.scalar()
        lo, hi = spec.qmin, spec.qmax
        if self.activation is not None:
            flo, fhi = activation_range(self.activation)
            if flo is not None:
                lo = max(lo, min(hi, round(flo / scale) + zp))
            if fhi is not None:
                hi = min(hi, max(lo, round(fhi / scale) + zp))
        return lo, hi


# (rule kind, input form) -> lowering. The form is "static" (calibrated integer inputs), "dynamic" (float
# inputs quantized at run time) or "float" (weight-only): the values of QuantConfig.activations.
LOWERINGS: dict[tuple[str, str], Callable[[Rewriter, Match], fx.Node | None]] = {}
FLOAT_OUTPUT_KINDS = {"conv2d", "linear", "matmul", "mul", "embedding"}  # kinds whose lowering also handles Match.out = None


def lowering(kind: str, inputs: str = "static"):
    def deco(fn):
        LOWERINGS[(kind, inputs)] = fn
        return fn
    return deco


def _arg(node: fx.Node, i: int, default):
    return node.args[i] if len(node.args) > i else default


def _pair(v) -> list[int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return v * 2 if len(v) == 1 else v


def _requantize(rw: Rewriter, m: Match, acc: fx.Node, real_scale: torch.Tensor, axis: int, x_zp: int = 0) -> fx.Node:
    lo, hi = m.out_range()
    _, zo = m.out.scalar()
    scale = rw.const(real_scale.to(torch.float32).reshape(-1), f"{m.last.name}_requant_scale", m.anchor)
    return rw.call(
        qc.requantize.default, (acc, x_zp, scale, axis, zo, lo, hi, m.out.spec.torch_dtype), m.anchor,
        like=m.op, represents=m.last, name=f"{m.last.name}_q",
    )


def _bias_int32(rw: Rewriter, m: Match, acc_scale: torch.Tensor, index: int) -> fx.Node | None:
    bias = _arg(m.op, index, None)
    if bias is None:
        return None
    b = constant(rw.gm, bias).detach().to(torch.float64)
    q = torch.round(b / acc_scale.to(torch.float64)).clamp(-(2**31), 2**31 - 1).to(torch.int32)
    return rw.const(q, f"{m.op.name}_bias_i32", m.anchor)


def _weight_const(rw: Rewriter, m: Match, hint: str) -> fx.Node:
    """The integer weight as a constant that records its bit width (int4 values sit in int8 elements)."""
    w, wq = m.weights[0]
    node = rw.const(w, hint, m.anchor, share=True)
    meta.set_storage_bits(node, wq.spec.bits)
    return node


def _weight_layer(m: Match, kind: str) -> None:
    """Bytes of the weight codes packed at their width; per-group scales (fp32) count too, since at
    group size 32 they add a bit per weight. Per-channel scales are noise next to the codes."""
    w, wq = m.weights[0]
    nbytes = math.ceil(w.numel() * wq.spec.bits / 8) + (wq.scale.numel() * 4 if wq.per_group else 0)
    meta.set_layer(m.last, meta.LayerInfo(kind, wq.spec.bits, nbytes))


def _unsigned(rw: Rewriter, m: Match, x: fx.Node, zero_point: int) -> tuple[fx.Node, int]:
    """int8 codes (an embedding table's, shared by its gathered rows) as the uint8 codes of the same
    scale with the zero point moved by 128, which every integer GEMM kernel takes: exact."""
    wide = rw.cast(x, torch.int16, m.anchor, like=m.op)
    shifted = rw.call(aten.add.Tensor, (wide, 128), m.anchor, like=m.op)
    return rw.cast(shifted, torch.uint8, m.anchor, like=m.op), zero_point + 128


def _gemm_like(rw: Rewriter, m: Match, kind: str, target, extra: tuple, axis: int) -> fx.Node | None:
    (x, xq), (_, wq) = m.inputs[0], m.weights[0]
    if xq.per_channel:
        return None
    sx, zx = xq.scalar()
    if xq.spec.torch_dtype == torch.int8:
        x, zx = _unsigned(rw, m, x, zx)
    acc_scale = sx * wq.scale
    if bool((wq.zero_point != 0).any()):
        return None  # asymmetric weights are not lowered; they stay float
    bias = _bias_int32(rw, m, acc_scale, 2)
    w_node = _weight_const(rw, m, f"{m.op.name}_weight_int")
    acc = rw.call(target, (x, w_node, bias, zx, False, *extra), m.anchor, like=m.op, represents=m.last, name=f"{m.op.name}_acc")
    _weight_layer(m, kind)
    if m.out is None:
        out = _dequantize_accumulator(rw, m, acc, acc_scale, axis)
    else:
        out = _requantize(rw, m, acc, acc_scale / m.out.scalar()[0], axis)
    meta.set_layer(out, meta.layer(m.last))
    return out


def _dequantize_accumulator(rw: Rewriter, m: Match, acc: fx.Node, acc_scale: torch.Tensor, axis: int) -> fx.Node:
    """Float output straight from the int32 accumulator (a quantized layer whose consumer is float)."""
    scale = rw.const(acc_scale.to(torch.float32).reshape(-1), f"{m.op.name}_acc_scale", m.anchor)
    zeros = rw.const(torch.zeros(1, dtype=torch.int32), f"{m.op.name}_acc_zero", m.anchor)  # broadcasts
    return rw.call(qc.dequantize_per_channel.default, (acc, scale, zeros, axis), m.anchor, like=m.op, represents=m.op)


@lowering("conv2d")
def _conv2d(rw: Rewriter, m: Match):
    op = m.op
    extra = (_pair(_arg(op, 3, 1)), _pair(_arg(op, 4, 0)), _pair(_arg(op, 5, 1)), int(_arg(op, 6, 1)))
    return _gemm_like(rw, m, "conv2d", qc.conv2d_int.default, extra, 1)


@lowering("linear")
def _linear(rw: Rewriter, m: Match):
    return _gemm_like(rw, m, "linear", qc.linear_int.default, (), -1)


def _float_bias(rw: Rewriter, m: Match) -> fx.Node | None:
    """The bias as a constant of its own: read through the float module it would keep that module's
    float weight stored too."""
    bias = _arg(m.op, 2, None)
    return None if bias is None else rw.const(constant(rw.gm, bias), f"{m.op.name}_bias", m.anchor)


def _row_scales(w: torch.Tensor, wq: QParams) -> torch.Tensor:
    """Weight scales as [N, K // group_size]; per-channel and per-tensor ones as one group per row, [N, 1]."""
    scale = wq.scale if wq.per_group else wq.scale.reshape(-1, 1)
    groups = w.shape[1] // (wq.spec.group_size or w.shape[1])
    return scale.expand(w.shape[0], groups).contiguous()


def _float_output_weights(m: Match) -> tuple[fx.Node, torch.Tensor, QParams] | None:
    """The float input, integer weight and its qparams of a Linear whose output stays float, if its
    weights are symmetric (zero point 0), which the weight-only and dynamic kernels assume."""
    (x, _), (w, wq) = m.inputs[0], m.weights[0]
    if m.out is not None or bool((wq.zero_point != 0).any()):
        return None
    return x, w, wq


@lowering("linear", inputs="float")
def _linear_weight_only(rw: Rewriter, m: Match):
    if (found := _float_output_weights(m)) is None:
        return None
    x, w, wq = found
    scale = rw.const(_row_scales(w, wq), f"{m.op.name}_weight_scale", m.anchor)
    w_node = _weight_const(rw, m, f"{m.op.name}_weight_int")
    group_size = wq.spec.group_size or w.shape[1]
    out = rw.call(qc.linear_weight_only.default, (x, w_node, scale, _float_bias(rw, m), group_size), m.anchor,
                  like=m.op, represents=m.op)
    _weight_layer(m, "linear weight-only")
    meta.set_layer(out, meta.layer(m.last))
    return out


@lowering("linear", inputs="dynamic")
def _linear_dynamic(rw: Rewriter, m: Match):
    if (found := _float_output_weights(m)) is None or found[2].per_group:
        return None
    x, w, wq = found
    scale = rw.const(_row_scales(w, wq).reshape(-1), f"{m.op.name}_weight_scale", m.anchor)
    w_node = _weight_const(rw, m, f"{m.op.name}_weight_int")
    out = rw.call(qc.linear_dynamic.default, (x, w_node, scale, _float_bias(rw, m)), m.anchor, like=m.op, represents=m.op)
    _weight_layer(m, "linear dynamic")
    meta.set_layer(out, meta.layer(m.last))
    return out


def _two_input(m: Match):
    (a, aq), (b, bq) = m.inputs
    if aq.per_channel or bq.per_channel:
        return None
    return a, aq.scalar(), b, bq.scalar()


def _product_of_activations(target):
    """matmul / element-wise mul of two quantized activations: int32 products of (a - za)(b - zb)."""

    def lower(rw: Rewriter, m: Match):
        if (ins := _two_input(m)) is None:
            return None
        a, (sa, za), b, (sb, zb) = ins
        acc = rw.call(target, (a, b, za, zb), m.anchor, like=m.op, represents=m.last, name=f"{m.op.name}_acc")
        if m.out is None:
            return _dequantize_accumulator(rw, m, acc, torch.tensor([sa * sb]), -1)
        return _requantize(rw, m, acc, torch.tensor(sa * sb / m.out.scalar()[0]), -1)

    return lower


lowering("matmul")(_product_of_activations(qc.matmul_int.default))
lowering("mul")(_product_of_activations(qc.mul_int.default))


@lowering("add")
def _add(rw: Rewriter, m: Match):
    if (ins := _two_input(m)) is None:
        return None
    a, (sa, za), b, (sb, zb) = ins
    so, zo = m.out.scalar()
    lo, hi = m.out_range()
    return rw.call(
        qc.add_q.default, (a, sa, za, b, sb, zb, so, zo, lo, hi, m.out.spec.torch_dtype), m.anchor,
        like=m.op, represents=m.last, name=f"{m.last.name}_q",
    )


def _same_params(m: Match) -> bool:
    return m.inputs[0][1].same_as(m.out)


@lowering("passthrough")
def _passthrough(rw: Rewriter, m: Match):
    if not _same_params(m):
        return None
    return rw.call(m.op.target, (m.inputs[0][0], *m.op.args[1:]), m.anchor, like=m.op, represents=m.op)


def _embedding_rows(rw: Rewriter, m: Match) -> fx.Node:
    """A table with one scale per row (a table tied to a Linear, as GPT-2's lm_head is to its token
    embedding, takes the Linear's per-channel scheme): the int8 rows and their scales are gathered alike."""
    _, wq = m.weights[0]
    w_node = _weight_const(rw, m, f"{m.op.name}_weight_int")
    _weight_layer(m, "embedding")
    ids = m.op.args[1:]
    rows = rw.call(aten.embedding.default, (w_node, *ids), m.anchor, like=m.op, represents=m.op)
    codes = rw.cast(rows, torch.float32, m.anchor, like=m.op)
    if bool(wq.zero_point.any()):
        zeros = rw.const(wq.zero_point.reshape(-1, 1).to(torch.float32), f"{m.op.name}_row_zero", m.anchor)
        codes = rw.call(aten.sub.Tensor, (codes, rw.call(aten.embedding.default, (zeros, *ids), m.anchor, like=m.op)),
                        m.anchor, like=m.op)
    scales = rw.const(wq.scale.reshape(-1, 1).to(torch.float32), f"{m.op.name}_row_scale", m.anchor)
    out = rw.call(aten.mul.Tensor, (codes, rw.call(aten.embedding.default, (scales, *ids), m.anchor, like=m.op)),
                  m.anchor, like=m.op, represents=m.op)
    meta.set_layer(out, meta.layer(m.op))
    return out


@lowering("pad")
def _pad(rw: Rewriter, m: Match):
    """Constant padding of the codes: the pad value's own code (0.0 -> the zero point), so the padded
    tensor is exactly the quantized padded float tensor."""
    if not _same_params(m):
        return None
    (x, xq), op = m.inputs[0], m.op
    value = _arg(op, 3 if op.target == aten.pad.default else 2, None) or op.kwargs.get("value") or 0.0
    scale, zero_point = xq.scalar()
    code = min(max(round(value / scale) + zero_point, xq.spec.qmin), xq.spec.qmax)
    return rw.call(aten.constant_pad_nd.default, (x, list(op.args[1]), code), m.anchor, like=op, represents=op)


@lowering("clamp")
def _clamp(rw: Rewriter, m: Match):
    if not _same_params(m):
        return None
    fused = Match(m.op, m.op, m.anchor, m.inputs, m.weights, m.out)
    lo, hi = fused.out_range()
    return rw.call(aten.clamp.default, (m.inputs[0][0], lo, hi), m.anchor, like=m.op, represents=m.op)


@lowering("max_pool2d")
def _max_pool2d(rw: Rewriter, m: Match):
    if not _same_params(m):
        return None
    op = m.op
    kernel = _pair(op.args[1])
    stride = _pair(_arg(op, 2, None) or kernel)
    args = (m.inputs[0][0], kernel, stride, _pair(_arg(op, 3, 0)), _pair(_arg(op, 4, 1)), bool(_arg(op, 5, False)))
    return rw.call(qc.max_pool2d_int.default, args, m.anchor, like=m.op, represents=op)


def _window_average(rw: Rewriter, m: Match, acc: fx.Node, count: int) -> fx.Node:
    sx, _ = m.inputs[0][1].scalar()
    return _requantize(rw, m, acc, torch.tensor(sx / (m.out.scalar()[0] * count)), -1)


@lowering("adaptive_avg_pool2d")
def _adaptive_avg_pool2d(rw: Rewriter, m: Match):
    x, xq = m.inputs[0]
    h, w = shapes.shape(m.op.args[0])[-2:]
    oh, ow = _pair(m.op.args[1])
    kernel = [h // oh, w // ow]
    args = (x, xq.scalar()[1], kernel, kernel, [0, 0], False)
    acc = rw.call(qc.avg_pool2d_int.default, args, m.anchor, like=m.op, represents=m.op, name=f"{m.op.name}_acc")
    return _window_average(rw, m, acc, kernel[0] * kernel[1])


@lowering("avg_pool2d")
def _avg_pool2d(rw: Rewriter, m: Match):
    x, xq = m.inputs[0]
    op = m.op
    kernel = _pair(op.args[1])
    stride = _pair(_arg(op, 2, None) or kernel)
    args = (x, xq.scalar()[1], kernel, stride, _pair(_arg(op, 3, 0)), bool(_arg(op, 4, False)))
    acc = rw.call(qc.avg_pool2d_int.default, args, m.anchor, like=m.op, represents=op, name=f"{op.name}_acc")
    return _window_average(rw, m, acc, kernel[0] * kernel[1])


@lowering("mean")
def _mean(rw: Rewriter, m: Match):
    x, xq = m.inputs[0]
    dims = list(m.op.args[1])
    in_shape = shapes.shape(m.op.args[0])
    count = math.prod(in_shape[d] for d in dims)
    keepdim = bool(_arg(m.op, 2, False))
    acc = rw.call(qc.sum_int.default, (x, xq.scalar()[1], dims, keepdim), m.anchor, like=m.op, represents=m.op, name=f"{m.op.name}_acc")
    return _window_average(rw, m, acc, count)


@lowering("lut")
def _lut(rw: Rewriter, m: Match):
    x, xq = m.inputs[0]
    if xq.per_channel:
        return None
    sx, zx = xq.scalar()
    codes = torch.arange(xq.spec.qmin, xq.spec.qmax + 1)
    values = m.op.target(dequantize_tensor(codes, sx, zx), *m.op.args[1:], **m.op.kwargs)
    so, zo = m.out.scalar()
    table = quantize_tensor(values, so, zo, m.out.spec.qmin, m.out.spec.qmax, m.out.spec.torch_dtype)
    t = rw.const(table, f"{m.op.name}_table", m.anchor)
    return rw.call(qc.lut.default, (x, t, xq.spec.qmin), m.anchor, like=m.op, represents=m.op, name=f"{m.op.name}_q")


@lowering("cat")
def _cat(rw: Rewriter, m: Match):
    so, zo = m.out.scalar()
    parts = []
    for x, xq in m.inputs:
        if xq.per_channel:
            return None
        if not xq.same_as(m.out):
            sx, zx = xq.scalar()
            scale = rw.const(torch.tensor([sx / so], dtype=torch.float32), f"{m.op.name}_in_scale", m.anchor)
            spec = m.out.spec
            x = rw.call(qc.requantize.default, (x, zx, scale, -1, zo, spec.qmin, spec.qmax, spec.torch_dtype), m.anchor, like=m.op, represents=m.op)
        parts.append(x)
    return rw.call(aten.cat.default, (parts, *m.op.args[1:]), m.anchor, like=m.op, represents=m.op)


@lowering("embedding")
def _embedding(rw: Rewriter, m: Match):
    """Rows gathered from the integer table; where the next op is float (LayerNorm in transformers'
    embeddings), they are dequantized after the gather: the table is stored as integers either way."""
    _, wq = m.weights[0]
    if wq.per_channel:
        return _embedding_rows(rw, m) if m.out is None and wq.spec.axis == 0 and not wq.per_group else None
    if m.out is not None and not wq.same_as(m.out):
        return None
    w_node = _weight_const(rw, m, f"{m.op.name}_weight_int")
    _weight_layer(m, "embedding")
    out = rw.call(aten.embedding.default, (w_node, *m.op.args[1:]), m.anchor, like=m.op, represents=m.op)
    if m.out is None:
        meta.set_qparams(out, wq)  # gathered rows keep the table's qparams
        scale, zero_point = wq.scalar()
        out = rw.call(qc.dequantize_per_tensor.default, (out, scale, zero_point), m.anchor, like=m.op, represents=m.op)
    meta.set_layer(out, meta.layer(m.op))
    return out
