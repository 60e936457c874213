"""How much of a compiled graph's weights are stored as integers, and which weighted layers stayed float.

A weighted layer is an op that multiplies by a constant matrix (linear in its spellings, convolutions,
embeddings, recurrent cells); it stays float when its weight (a floating constant of 2 or more dims,
reached directly or through views) is still float in the final graph. Whether that was the user's choice
(QuantConfig.float_layers or layer_bits, or the bit-width chooser) decides between a fault of coverage
(a warning, or an error under compile(strict=True)) and a decision the report merely lists.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import fx

from ..ir import meta
from ..ir.rewrite import constant
from .annotate import layer_names
from .config import FLOAT, QuantConfig

WEIGHTED_OPS = frozenset({
    "linear", "mm", "addmm", "bmm", "baddbmm", "matmul", "einsum",
    "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "embedding", "embedding_bag", "_embedding_bag", "lstm", "gru", "rnn_tanh", "rnn_relu",
})
_VIEWS = frozenset({"t", "permute", "transpose", "view", "reshape", "unsqueeze", "squeeze", "expand", "contiguous", "clone"})


@dataclass
class FloatWeight:
    layer: str
    op: str
    params: int
    reason: str
    chosen: bool  # kept float on purpose (the config or the bit-width chooser), not for lack of a kernel


def _aten_name(node: fx.Node) -> str | None:
    packet = getattr(node.target, "_overloadpacket", None)
    return packet.__name__ if packet is not None and node.target.namespace == "aten" else None


def _constant_behind(arg) -> fx.Node | None:
    while isinstance(arg, fx.Node) and arg.op == "call_function" and _aten_name(arg) in _VIEWS:
        arg = arg.args[0]
    return arg if isinstance(arg, fx.Node) and arg.op == "get_attr" else None


def _float_weights_of(gm: fx.GraphModule, node: fx.Node) -> list[torch.Tensor]:
    found = [constant(gm, c) for c in map(_constant_behind, node.all_input_nodes) if c is not None]
    return [t for t in found if t.is_floating_point() and t.dim() >= 2]


def _chosen(node: fx.Node, config: QuantConfig) -> bool:
    names = layer_names(node)
    return (any(config.float_reason(n) is not None for n in names)
            or config.pinned_width(*names) == FLOAT or meta.weight_bits(node) == FLOAT)


def float_weighted_layers(gm: fx.GraphModule, config: QuantConfig) -> list[FloatWeight]:
    rows = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or _aten_name(node) not in WEIGHTED_OPS:
            continue
        weights = _float_weights_of(gm, node)
        if weights:
            reason = meta.float_reason(node) or f"no integer lowering for aten.{_aten_name(node)}"
            rows.append(FloatWeight(meta.origin(node) or node.name, _aten_name(node),
                                    sum(w.numel() for w in weights), reason, _chosen(node, config)))
    return rows


def _quantization_parameter(node: fx.Node) -> bool:
    """A constant only qcompile's ops read, and never as their data (args[0]): a scale or the float bias of
    an integer kernel, not a weight."""
    return bool(node.users) and all(
        u.op == "call_function" and getattr(u.target, "namespace", None) == "qcompile" and u.args[:1] != (node,)
        for u in node.users)


def float_weights(gm: fx.GraphModule) -> int:
    """Elements of the graph's float constants, quantization parameters aside."""
    found = {n.target: constant(gm, n) for n in gm.graph.find_nodes(op="get_attr") if not _quantization_parameter(n)}
    return sum(t.numel() for t in found.values() if t.is_floating_point())


def coverage(gm: fx.GraphModule, config: QuantConfig, captured_weights: int) -> dict:
    """{"weights": float elements of the captured model, "float_weights": those still float in `gm`,
    "float_layers": [FloatWeight as dict]}: the JSON the report keeps."""
    return {
        "weights": captured_weights,
        "float_weights": float_weights(gm),
        "float_layers": [asdict(r) for r in float_weighted_layers(gm, config)],
    }


def describe_float(rows: list[dict], limit: int = 6) -> str:
    shown = ", ".join(f"{r['layer']} ({r['op']}, {r['params']:,} params: {r['reason']})" for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
