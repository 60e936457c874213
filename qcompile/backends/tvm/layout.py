"""Channels-last (NHWC) activations inside the TVM module.

The integer fx graph is NCHW, PyTorch's layout and the reference backend's. CPU conv kernels want the
channels innermost instead: a depthwise or direct convolution then vectorizes over channels with
contiguous loads, and a pointwise convolution is a GEMM over pixel rows with no transpose at all. So the
lowering keeps a 4-D activation NHWC from the conv / pool that produced it onward; element-wise ops
follow the layout of their input (a per-channel axis argument is remapped), and every other consumer
(reshape, linear, float islands, the outputs) reads an NCHW copy, transposed once per tensor.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx
from tvm import relax

qc = torch.ops.qcompile
aten = torch.ops.aten

TO_NHWC = (0, 2, 3, 1)
TO_NCHW = (0, 3, 1, 2)


def nhwc_axis(axis: int) -> int:
    """Where NCHW dimension `axis` sits in the NHWC tensor."""
    return TO_NHWC.index(axis % 4)


@dataclass(frozen=True)
class Follower:
    """An element-wise op that runs in whatever layout its first activation has."""

    activations: tuple[int, ...]  # positional arguments that are activations (the rest are parameters)
    axis: int | None = None  # positional argument naming a channel axis, if any

    def in_layout(self, args: tuple) -> tuple:
        if self.axis is None:
            return args
        return (*args[: self.axis], nhwc_axis(args[self.axis]), *args[self.axis + 1:])


FOLLOWERS: dict[object, Follower] = {
    qc.requantize_fixed.default: Follower((0,), axis=4),
    qc.dequantize_per_channel.default: Follower((0,), axis=3),
    qc.add_fixed.default: Follower((0, 3)),
    qc.lut.default: Follower((0,)),
    qc.quantize_per_tensor.default: Follower((0,)),
    qc.dequantize_per_tensor.default: Follower((0,)),
    aten.clamp.default: Follower((0,)),
    aten.to.device: Follower((0,)),
    aten.to.dtype: Follower((0,)),
    aten._to_copy.default: Follower((0,)),
}


def is_4d(node) -> bool:
    return isinstance(node, fx.Node) and getattr(node.meta.get("val"), "ndim", None) == 4


class Layouts:
    """Which lowered values are NHWC, and their transposed copies (made once, on first use)."""

    def __init__(self, bb: relax.BlockBuilder, env: dict):
        self.bb, self.env = bb, env
        self.channels_last: set[fx.Node] = set()
        self._copies: dict[tuple[fx.Node, bool], relax.Expr] = {}

    def is_nhwc(self, node) -> bool:
        return node in self.channels_last

    def get(self, node: fx.Node, nhwc: bool) -> relax.Expr:
        """`node`'s value in the requested layout (4-D activations only may be asked for NHWC)."""
        if self.is_nhwc(node) == nhwc:
            return self.env[node]
        key = (node, nhwc)
        if key not in self._copies:
            perm = TO_NHWC if nhwc else TO_NCHW
            self._copies[key] = self.bb.emit(relax.op.permute_dims(self.env[node], perm))
        return self._copies[key]

    def follows_nhwc(self, node: fx.Node) -> bool:
        follower = FOLLOWERS.get(node.target)
        return follower is not None and self.is_nhwc(node.args[follower.activations[0]])

    def activation_nodes(self, node: fx.Node) -> set:
        return {node.args[i] for i in FOLLOWERS[node.target].activations}

    def nchw_view(self) -> "NCHWView":
        return NCHWView(self)


class NCHWView(Mapping):
    """The lowering environment as consumers that only know NCHW see it."""

    def __init__(self, layouts: Layouts):
        self.layouts = layouts

    def __getitem__(self, node):
        return self.layouts.get(node, False)

    def __iter__(self):
        return iter(self.layouts.env)

    def __len__(self):
        return len(self.layouts.env)
