"""Which ATen ops can be quantized, and how: one registry entry per op, read by calibrate and fuse-qdq.

An op without an entry stays float; its quantized neighbours get dequantize/quantize at the border.
`kind` names the integer lowering registered in fuse-qdq. A rule's `check` may refuse a particular use
of an op (an unsupported argument) with a reason that the report shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

aten = torch.ops.aten

NEW = "new"  # the op's output gets its own observer and qparams
SHARE = "share"  # the op's output reuses the qparams of its first activation input (monotone / data movement)


@dataclass(frozen=True)
class OpRule:
    kind: str
    act_args: tuple[int, ...] = (0,)
    weight_args: tuple[tuple[int, int | None], ...] = ()  # (arg index, per-channel axis or None)
    output: str = NEW
    fuses_activation: bool = False
    list_arg: bool = False  # the activations are the elements of args[0] (cat)
    check: Callable[[fx.Node], str | None] | None = None

    def activation_inputs(self, node: fx.Node) -> list[fx.Node]:
        if self.list_arg:
            return [a for a in node.args[0] if isinstance(a, fx.Node)]
        return [node.args[i] for i in self.act_args if i < len(node.args) and isinstance(node.args[i], fx.Node)]

    def weight_inputs(self, node: fx.Node) -> list[tuple[fx.Node, int | None]]:
        return [(node.args[i], axis) for i, axis in self.weight_args if isinstance(node.args[i], fx.Node)]

    def unsupported(self, node: fx.Node, weights_are_constants: bool = True) -> str | None:
        """Why this use of the op cannot be quantized (None: it can). fuse-qdq sees weights behind
        dequantize nodes, so it skips the constant-weight test."""
        if weights_are_constants:
            for w, _ in self.weight_inputs(node):
                if w.op != "get_attr":
                    return "weight is computed at run time, not a constant"
        return self.check(node) if self.check else None


RULES: dict[object, OpRule] = {}


def register_rule(rule: OpRule, *targets) -> None:
    for t in targets:
        RULES[t] = rule


def rule_for(node: fx.Node) -> OpRule | None:
    return RULES.get(node.target) if node.op == "call_function" else None


def _arg(node: fx.Node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _both_tensors(node: fx.Node) -> str | None:
    if not all(isinstance(a, fx.Node) for a in node.args[:2]):
        return "one operand is a Python scalar (kept float)"
    if _arg(node, 2, "alpha", 1) != 1:
        return "add with alpha != 1"
    return None


def _conv_check(node: fx.Node) -> str | None:
    if isinstance(_arg(node, 4, "padding", 0), str):
        return "string padding"
    return None


def _activation_bounds_check(node: fx.Node) -> str | None:
    if node.target == aten.clamp.default and not all(
        isinstance(a, (int, float, type(None))) for a in node.args[1:3]
    ):
        return "clamp with tensor bounds"
    return None


def _pad_check(node: fx.Node) -> str | None:
    """Constant padding only (TF-style "same" padding before a conv); reflect/replicate stay float."""
    mode = _arg(node, 2, "mode", "constant") if node.target == aten.pad.default else "constant"
    return None if mode == "constant" else f"pad mode {mode!r} has no integer kernel; runs in float"


def _adaptive_pool_check(node: fx.Node) -> str | None:
    size = list(node.args[1])
    v = node.args[0].meta.get("val")
    shape = v.shape if v is not None else None
    if size == [1, 1] or (shape is not None and shape[-2] % size[0] == 0 and shape[-1] % size[1] == 0):
        return None
    return "adaptive pooling with uneven windows"


def _avg_pool_check(node: fx.Node) -> str | None:
    if not _arg(node, 5, "count_include_pad", True) or _arg(node, 6, "divisor_override", None) is not None:
        return "avg_pool2d with count_include_pad=False or a divisor override"
    return None


register_rule(OpRule("conv2d", weight_args=((1, 0),), fuses_activation=True, check=_conv_check), aten.conv2d.default)
register_rule(OpRule("linear", weight_args=((1, 0),), fuses_activation=True), aten.linear.default)
register_rule(OpRule("matmul", act_args=(0, 1), fuses_activation=True), aten.matmul.default, aten.bmm.default)
register_rule(OpRule("add", act_args=(0, 1), fuses_activation=True, check=_both_tensors), aten.add.Tensor)
register_rule(OpRule("mul", act_args=(0, 1), check=_both_tensors), aten.mul.Tensor)
register_rule(
    OpRule("clamp", output=SHARE, check=_activation_bounds_check),
    aten.relu.default, aten.hardtanh.default, aten.clamp.default,
)
register_rule(
    OpRule("lut"),
    aten.hardswish.default, aten.gelu.default, aten.sigmoid.default, aten.silu.default, aten.tanh.default,
    aten.hardsigmoid.default,
)
register_rule(OpRule("max_pool2d", output=SHARE), aten.max_pool2d.default)
register_rule(OpRule("adaptive_avg_pool2d", check=_adaptive_pool_check), aten.adaptive_avg_pool2d.default)
register_rule(OpRule("avg_pool2d", check=_avg_pool_check), aten.avg_pool2d.default)
register_rule(OpRule("mean"), aten.mean.dim)
register_rule(
    OpRule("passthrough", output=SHARE),
    aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten.permute.default, aten.transpose.int,
    aten.contiguous.default, aten.clone.default, aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default,
    aten.slice.Tensor, aten.select.int, aten.expand.default, aten.t.default, aten.flatten.using_ints,
    aten.index_select.default,
    aten.amax.default,  # quantizing is monotone, so the largest code is the code of the largest value
)
register_rule(OpRule("cat", output=NEW, list_arg=True), aten.cat.default)
register_rule(OpRule("pad", output=SHARE, check=_pad_check), aten.pad.default, aten.constant_pad_nd.default)
register_rule(OpRule("embedding", act_args=(), weight_args=((0, None),), output=SHARE), aten.embedding.default)

# Activations that a preceding conv/linear/matmul/add absorbs into its requantize clamp.
FUSABLE_ACTIVATIONS = {aten.relu.default, aten.hardtanh.default, aten.clamp.default}


def activation_range(node: fx.Node) -> tuple[float | None, float | None]:
    """The float interval an activation clamps to (None: unbounded on that side)."""
    return _ACTIVATION_RANGES[node.target](node)


_ACTIVATION_RANGES: dict[object, Callable[[fx.Node], tuple]] = {
    aten.relu.default: lambda n: (0.0, None),
    aten.hardtanh.default: lambda n: (float(_arg(n, 1, "min_val", -1.0)), float(_arg(n, 2, "max_val", 1.0))),
    aten.clamp.default: lambda n: (_arg(n, 1, "min", None), _arg(n, 2, "max", None)),
}
