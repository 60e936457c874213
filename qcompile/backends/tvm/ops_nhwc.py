"""TE definitions of the spatial integer ops in NHWC (see layout.py for why), one per fx target.

Semantics are those of qcompile/quant/ops.py, only the activations are channels-last: the conv reads
its weights as [kh, kw, cin/groups, cout], prepared once at lowering, so that the innermost output loop
(over output channels) reads input pixels and weights with unit stride and vectorizes on CPUs; CUDA's
tensor-core GEMM reads them as [cout, kh, kw, cin] (CONV_OHWI, cuda/conv_lowering.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx
from tvm import relax, te, topi
from tvm import tirx as tir

from ...ir.rewrite import constant
from .layout import Layouts, is_4d
from .ops import cast, dtype_of, product16, tvm_dtype, widen
from .var_names import var_name

qc = torch.ops.qcompile

HWIO = (2, 3, 1, 0)  # OIHW -> [kh, kw, cin/groups, cout]
OHWI = (0, 2, 3, 1)  # OIHW -> [cout, kh, kw, cin/groups]


def _pad_nhwc(x, ph: int, pw: int, value):
    return topi.nn.pad(x, [0, ph, pw, 0], [0, ph, pw, 0], pad_value=value, name="pad")


def conv_output_hw(h, w, kernel, stride, padding, dilation):
    """Output height and width of a convolution (static ints or symbolic sizes)."""
    return tuple((size + 2 * padding[d] - dilation[d] * (kernel[d] - 1) - 1) // stride[d] + 1
                 for d, size in enumerate((h, w)))


def conv2d_nhwc(node, x, w_hwio, bias, x_zp, zp_folded, stride, padding, dilation, groups):
    """The conv with [kh, kw, cin/groups, cout] weights (the CPUs' order: output channels innermost)."""
    return _conv2d(x, w_hwio.shape, lambda ry, rx, rc, co: w_hwio[ry, rx, rc, co], bias, x_zp, zp_folded, stride,
                   padding, dilation, groups)


def conv2d_nhwc_ohwi(node, x, w_ohwi, bias, x_zp, zp_folded, stride, padding, dilation, groups):
    """The conv with [cout, kh, kw, cin/groups] weights (input channels innermost, as a GEMM's K)."""
    cout, kh, kw, cin_g = w_ohwi.shape
    return _conv2d(x, (kh, kw, cin_g, cout), lambda ry, rx, rc, co: w_ohwi[co, ry, rx, rc], bias, x_zp, zp_folded,
                   stride, padding, dilation, groups)


def _conv2d(x, hwio_shape, weight, bias, x_zp, zp_folded, stride, padding, dilation, groups):
    """`weight(ry, rx, rc, co)`: the weight of tap (ry, rx), input channel rc of the group, output channel co."""
    n, h, wd, _ = x.shape
    kh, kw, cin_g, cout = hwio_shape
    cout_g = cout // groups
    xp = _pad_nhwc(x, padding[0], padding[1], tir.const(x_zp, dtype_of(x)))
    sub = 0 if zp_folded else x_zp
    oh, ow = conv_output_hw(h, wd, (kh, kw), stride, padding, dilation)
    ry, rx, rc = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, kw), "rx"), te.reduce_axis((0, cin_g), "rc")

    def body(b, y, xx, co):
        # Ungrouped: the channel read is rc alone, so that the output channel indexes only the weights
        # and the output (what a schedule recognises a GEMM by: cuda/gemm_rule.py).
        ci = rc if groups == 1 else (co // cout_g) * cin_g + rc
        pix = xp[b, y * stride[0] + ry * dilation[0], xx * stride[1] + rx * dilation[1], ci]
        return te.sum(widen(product16(pix, sub, weight(ry, rx, rc, co))), axis=[ry, rx, rc])

    acc = te.compute((n, oh, ow, cout), body, name="conv2d_int")
    if bias is None:
        return acc
    return te.compute(acc.shape, lambda b, y, xx, co: acc[b, y, xx, co] + bias[co], name="conv2d_bias")


def avg_pool2d_nhwc(node, x, x_zp, kernel, stride, padding, ceil_mode):
    if ceil_mode:
        raise NotImplementedError("avg_pool2d with ceil_mode")
    shifted = topi.subtract(cast(x), x_zp)
    padded = _pad_nhwc(shifted, padding[0], padding[1], 0)
    n, h, w, c = padded.shape
    oh, ow = (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1
    ry, rx = te.reduce_axis((0, kernel[0]), "ry"), te.reduce_axis((0, kernel[1]), "rx")
    return te.compute(
        (n, oh, ow, c),
        lambda b, y, xx, ch: te.sum(padded[b, y * stride[0] + ry, xx * stride[1] + rx, ch], axis=[ry, rx]),
        name="avg_pool_sum",
    )


def max_pool2d_nhwc(node, x, kernel, stride, padding, dilation, ceil_mode):
    pads = [padding[0], padding[1], padding[0], padding[1]]
    return topi.nn.pool2d(x, kernel, stride, dilation, pads, "max", ceil_mode, "NHWC")


def _conv_weight(order: tuple, gm: fx.GraphModule, w: fx.Node, env: dict) -> relax.Expr:
    """The OIHW weight permuted to `order`: at build time when it is a constant."""
    if w.op == "get_attr":
        t = constant(gm, w).detach().permute(*order).contiguous()
        return relax.const(t.numpy(), tvm_dtype(t.dtype))
    return relax.op.permute_dims(env[w], order)


@dataclass(frozen=True)
class NhwcOp:
    convert: Callable
    # Arguments replaced before the converter sees them: argument position -> (gm, node, env) -> Relax value.
    prepare: dict[int, Callable]


NHWC_OPS: dict[object, NhwcOp] = {
    qc.conv2d_int.default: NhwcOp(conv2d_nhwc, {1: functools.partial(_conv_weight, HWIO)}),
    qc.avg_pool2d_int.default: NhwcOp(avg_pool2d_nhwc, {}),
    qc.max_pool2d_int.default: NhwcOp(max_pool2d_nhwc, {}),
}
# The conv with input channels innermost in its weights (cuda/conv_lowering.py).
CONV_OHWI = NhwcOp(conv2d_nhwc_ohwi, {1: functools.partial(_conv_weight, OHWI)})


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, node: fx.Node, layouts: Layouts, op: NhwcOp | None = None) -> relax.Expr:
    """The node's NHWC kernel (NHWC_OPS's, or `op`); its first argument (the activation) is read channels-last."""
    if not is_4d(node.args[0]):
        raise NotImplementedError(f"{node.target} on a {node.args[0].meta['val'].ndim}-D input (only batched NCHW)")
    op = op or NHWC_OPS[node.target]
    prepared = {node.args[i]: fn(gm, node.args[i], layouts.env) for i, fn in op.prepare.items()}
    inputs = node.all_input_nodes
    values = [prepared[n] if n in prepared else layouts.get(n, n is node.args[0]) for n in inputs]

    def build(*te_tensors):
        lookup = dict(zip(inputs, te_tensors))
        return op.convert(node, *fx.node.map_arg(node.args, lambda n: lookup[n]))

    out = bb.emit_te(build, *values, primfunc_name_hint=node.name, name_hint=var_name(node))
    layouts.channels_last.add(node)
    return out
