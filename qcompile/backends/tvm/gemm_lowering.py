"""Lower `linear_int` / pointwise `conv2d_int` followed by `requantize_fixed` to the hand-written x86 GEMM
kernel (x86_gemm.py) with weights packed at compile time; the int32 accumulator never reaches memory.

A pointwise convolution in NCHW is a GEMM over pixels once the activations are transposed to
pixel-major rows; the two transposes cost O(pixels x channels), the GEMM O(pixels x channels^2).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx
from tvm import relax

from ...ir.rewrite import constant
from .var_names import var_name
from .x86_gemm import Requant, gemm_prim_func, isa_for, pack_weight, pad_channels

qc = torch.ops.qcompile


def _args(node: fx.Node, *names):
    return dict(zip(names, node.args))


def _is_pointwise(conv: fx.Node) -> bool:
    a = _args(conv, "x", "w", "bias", "x_zp", "folded", "stride", "padding", "dilation", "groups")
    kh, kw = a["w"].meta["val"].shape[2:]
    return (kh, kw) == (1, 1) and list(a["stride"]) == [1, 1] and list(a["padding"]) == [0, 0] and a["groups"] == 1


_HEADS = {qc.linear_int.default: lambda n: True, qc.conv2d_int.default: _is_pointwise}


def plan(gm: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """requantize node -> its accumulator node, for every pair the GEMM kernel can take over."""
    pairs = {}
    for rq in gm.graph.nodes:
        if rq.target != qc.requantize_fixed.default:
            continue
        acc, x_zp, mult, shift = rq.args[:4]
        ok = (
            isinstance(acc, fx.Node) and acc.target in _HEADS and len(acc.users) == 1 and x_zp == 0
            and constant(gm, shift).numel() == 1 and _HEADS[acc.target](acc)
            and (acc.args[3] == 0 or acc.args[4])  # input zero point folded into the bias (or zero)
            and acc.args[2] is not None
        )
        if ok:
            pairs[rq] = acc
    return pairs


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, rq: fx.Node, acc: fx.Node, env: dict, target) -> relax.Expr:
    _, _, mult_n, shift_n, _axis, out_zp, qmin, qmax, dtype = rq.args
    x_n, w_n, bias_n = acc.args[:3]
    w = constant(gm, w_n).detach()
    w2 = w.reshape(w.shape[0], -1).numpy()
    n, k = w2.shape
    isa = isa_for(target)
    shape = list(x_n.meta["val"].shape)
    rows = int(np.prod(shape[:-1])) if acc.target == qc.linear_int.default else shape[0] * shape[2] * shape[3]
    tiling = isa.default_tiling(rows)  # short M (batch-1 linear) gets a short register tile
    padded = -(-n // tiling.nr) * tiling.nr
    mult = constant(gm, mult_n).to(torch.int32).expand(n)  # per-channel, or one value for all channels
    out_dtype = str(dtype).replace("torch.", "")
    requant = Requant(int(constant(gm, shift_n)), out_zp, qmin, qmax, out_dtype)
    name = f"gemm_{acc.name}"
    func = gemm_prim_func(n, k, requant, isa, tiling)
    func = func.with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name)
    gv = bb.add_func(func, name)
    consts = [
        relax.const(pack_weight(w2, isa, tiling.nr), "int32"),
        relax.const(pad_channels(constant(gm, bias_n).numpy(), padded), "int32"),
        relax.const(pad_channels(mult.numpy(), padded), "int32"),
    ]
    x = env[x_n]
    if acc.target == qc.conv2d_int.default:
        b, c, h, wd = shape
        pixels = bb.emit(relax.op.reshape(relax.op.permute_dims(x, [0, 2, 3, 1]), (rows, c)), var_name(acc))
        out = bb.emit(relax.call_tir(gv, [pixels, *consts], relax.TensorType((rows, n), out_dtype)), var_name(rq))
        return bb.emit(relax.op.permute_dims(relax.op.reshape(out, (b, h, wd, n)), [0, 3, 1, 2]), var_name(rq))
    flat = bb.emit(relax.op.reshape(x, (rows, k)), var_name(acc))
    out = bb.emit(relax.call_tir(gv, [flat, *consts], relax.TensorType((rows, n), out_dtype)), var_name(rq))
    return bb.emit(relax.op.reshape(out, (*shape[:-1], n)), var_name(rq))
