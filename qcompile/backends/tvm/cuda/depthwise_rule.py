"""Depthwise convolutions (one channel per group) on NVIDIA GPUs: one thread per output element.

A depthwise conv has KH * KW multiply-adds per output, too few for tensor cores (and no GEMM: every
channel has its own weights). The NHWC kernel FuseOps made from ops_nhwc.conv2d_nhwc (with its padding,
bias, requantize, clamps and residual add) runs one output element per thread, with the channel
innermost: the 32 lanes of a warp read 32 consecutive channels of each input pixel and of each weight
tap (coalesced), accumulate in a register over the unrolled window, and store the epilogue's result.
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, get_reduction_blocks
from tvm.target import Target

from .gemm_rule import inline_producers

THREADS = 256  # per block: 8 warps, each over 32 consecutive channels


def _uses(expr, var: tirx.Var) -> bool:
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _is_depthwise(block: tirx.Block) -> bool:
    """An int32 reduction over an NHWC window whose input channel is the output channel: the output's
    channel variable is in the input's channel index (a GEMM's is not)."""
    if len(block.reads) < 2 or len(block.writes) != 1 or block.writes[0].source.dtype != "int32":
        return False
    out = block.writes[0].region
    x = block.reads[0]
    if len(out) != 4 or len(x.region) != 4 or x.source.dtype not in ("uint8", "int8"):
        return False
    channel = out[-1].min
    return isinstance(channel, tirx.Var) and _uses(x.region[-1].min, channel)


class DepthwiseConv(GPUScheduleRule):
    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
        if reductions is None or not _is_depthwise(sch.get(reductions[0])):
            return None
        conv = reductions[0]
        inline_producers(sch, conv)  # the padding: a bounds test in the window loop, no padded copy
        acc = sch.cache_write(conv, 0, "local")
        b, y, x, c, *window = sch.get_loops(conv)
        outputs = sch.fuse(b, y, x, c)
        blocks, threads = sch.split(outputs, [None, THREADS])
        sch.bind(blocks, "blockIdx.x")
        sch.bind(threads, "threadIdx.x")
        for loop in window:
            sch.unroll(loop)
        sch.reverse_compute_at(acc, threads)
        auto_inline_consumer_chain(sch, acc)
        return sch
