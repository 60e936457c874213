"""Lower a depthwise `conv2d_int` (followed by `requantize_fixed`, or alone) to the hand-written dot-product
kernel (depthwise_kernel.py) where the target's ISA has one, with the weights packed and the activations' offset
folded into the bias at compile time; with the requantize, the int32 accumulator never reaches memory.
Other targets, and depthwise convs the kernel does not cover, keep the generic NHWC TE conv (ops_nhwc.py).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx
from tvm import relax

from ....ir.rewrite import constant
from ..layout import Layouts
from ..ops import size_product
from ..ops_nhwc import conv_output_hw
from ..var_names import var_name
from . import depthwise_kernel
from .gemm_kernel import pad_channels
from .gemm_lowering import accumulators_taken, requant_of
from .isa import isa_for

qc = torch.ops.qcompile


def _kernel_for(target) -> depthwise_kernel.DepthwiseIsa | None:
    return depthwise_kernel.for_isa(isa_for(target)) if target is not None else None


def _is_depthwise(node) -> bool:
    """One output channel per input channel, uint8 activations (what the kernel's flip assumes), constant
    weights (packed at compile time). Not a one-channel conv (groups == 1): that is the GEMM's."""
    if not isinstance(node, fx.Node) or node.target != qc.conv2d_int.default:
        return False
    x, w, groups = node.args[0], node.args[1], node.args[8]
    channels = x.meta["val"].shape[1]
    return (
        w.op == "get_attr" and groups == channels > 1 and tuple(w.meta["val"].shape[:2]) == (channels, 1)
        and x.meta["val"].dtype == torch.uint8 and x.meta["val"].ndim == 4
    )


def plan(gm: fx.GraphModule, target) -> dict[fx.Node, fx.Node]:
    """result node -> its depthwise conv, for every depthwise conv the kernel takes over on `target`: a
    requantize (one shift for all channels) with its conv, or a conv alone (int32 out)."""
    if _kernel_for(target) is None:
        return {}
    return accumulators_taken(gm, _is_depthwise)


def _conv(acc: fx.Node) -> depthwise_kernel.DepthwiseConv:
    x, w, _, x_zp, _, stride, padding, dilation, _ = acc.args
    return depthwise_kernel.DepthwiseConv(x.meta["val"].shape[1], tuple(w.meta["val"].shape[2:]), tuple(stride),
                                   tuple(padding), tuple(dilation), x_zp)


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, acc: fx.Node, layouts: Layouts,
         target) -> relax.Expr:
    """The depthwise kernel computing `result`: `acc` requantized when result is its requantize, else `acc`
    itself."""
    dw = _kernel_for(target)
    conv = _conv(acc)
    w = constant(gm, acc.args[1]).detach().numpy()
    folded = acc.args[4]
    requant, mult = requant_of(gm, result if result is not acc else None, conv.channels)
    bias = constant(gm, acc.args[2]).numpy() if acc.args[2] is not None else np.zeros(conv.channels, np.int32)
    # The kernel reads x - a_offset; the op subtracts the zero point unless the bias already has it.
    bias = depthwise_kernel.offset_bias(bias, w, dw.a_offset - (0 if folded else conv.x_zp))
    padded = conv.blocks * depthwise_kernel.CHANNELS
    x = layouts.get(acc.args[0], True)
    b, h, wd, _ = x.ty.shape.values
    oh, ow = conv_output_hw(h, wd, conv.kernel, conv.stride, conv.padding, conv.dilation)
    name = f"depthwise_{acc.name}"
    func = depthwise_kernel.depthwise_prim_func(conv, requant, dw, (b, oh, ow))
    gv = bb.add_func(func.with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name), name)
    consts = [
        relax.const(depthwise_kernel.pack_weight(w, conv), "int8"),
        relax.const(pad_channels(bias, padded), "int32"),
        relax.const(pad_channels(mult.numpy(), padded), "int32"),
    ]
    shape = (b, size_product([oh]), size_product([ow]), conv.channels)
    out_dtype = requant.out_dtype if requant else "int32"
    out = bb.emit(relax.call_tir(gv, [x, *consts], relax.TensorType(shape, out_dtype)), var_name(result))
    layouts.channels_last.add(result)
    return out
