"""Ungrouped `conv2d_int` on CUDA targets with its weights as [cout, kh, kw, cin] (ops_nhwc.CONV_OHWI): the
tensor-core GEMM (gemm_rule.py) reads them as its B operand [N = cout, K = kh * kw * cin], and with K
innermost in memory its global -> shared copy is 16-byte cp.async per thread (cin a multiple of 16; 4 or
1 bytes otherwise, consecutive threads on consecutive bytes). The CPUs' [kh, kw, cin, cout] order has
output channels innermost: read along K, each thread's bytes lay cout apart, copied one at a time.

The conv's requantize stays a TE op, which FuseOps fuses into the GEMM's epilogue."""
from __future__ import annotations

import torch
import tvm
from torch import fx
from tvm import relax

from .. import ops_nhwc
from ..layout import Layouts

qc = torch.ops.qcompile


def plan(gm: fx.GraphModule, target) -> dict[fx.Node, fx.Node]:
    """The ungrouped conv2d_int nodes on a CUDA `target` (each its own accumulator)."""
    if target is None or tvm.target.Target(target).kind.name != "cuda":
        return {}
    return {n: n for n in gm.graph.find_nodes(op="call_function", target=qc.conv2d_int.default) if n.args[8] == 1}


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, acc: fx.Node, layouts: Layouts,
         target) -> relax.Expr:
    return ops_nhwc.emit(bb, gm, acc, layouts, ops_nhwc.CONV_OHWI)
