"""Decide which tensors are quantized, with which QSpec, from the op rules and the QuantConfig."""
from __future__ import annotations

import torch
from torch import fx

from ..errors import UsageError
from ..ir import meta, shapes
from .config import FLOAT, QuantConfig
from .integer_lowering import FLOAT_OUTPUT_KINDS, LOWERINGS
from .qdq import is_dequantize, is_quantize
from .rules import FUSABLE_ACTIVATIONS, SHARE, rule_for


def _is_float_tensor(node: fx.Node) -> bool:
    v = shapes.val(node)
    return isinstance(v, torch.Tensor) and v.is_floating_point()


def share_root(node: fx.Node, by_name: dict[str, fx.Node]) -> fx.Node:
    while meta.share_source(node) is not None:
        node = by_name[meta.share_source(node)]
    return node


def _fusable_activation(node: fx.Node) -> fx.Node | None:
    if len(node.users) != 1:
        return None
    user = next(iter(node.users))
    rule = rule_for(user)
    if user.target in FUSABLE_ACTIVATIONS and user.args[0] is node and rule is not None and not rule.unsupported(user):
        return user
    return None


def is_prequantized(gm: fx.GraphModule) -> bool:
    """The graph already carries quantize/dequantize ops (e.g. torchao PT2E's convert_pt2e output)."""
    return any(is_quantize(n) or is_dequantize(n) for n in gm.graph.nodes)


def annotate(gm: fx.GraphModule, config: QuantConfig) -> None:
    """Mark tensors to quantize. A pre-quantized graph is left as its own quantizer decided."""
    for node in gm.graph.nodes:
        meta.clear_quant_annotations(node)
    if is_prequantized(gm):
        return
    requested: set[str] = set()
    _ANNOTATORS[config.activations](gm, config, requested)
    for field, named in (("float_layers", config.float_layers), ("layer_bits", config.layer_bits)):
        unknown = sorted({name for name, _ in named} - requested)
        if unknown:
            raise UsageError(f"QuantConfig.{field} names no quantizable layer: {', '.join(unknown)} "
                             "(use the names of the report's `layer` column or module paths)")


def _annotate_static(gm: fx.GraphModule, config: QuantConfig, requested: set[str]) -> None:
    """Weights and activations, the latter calibrated ahead of time."""
    act_spec = config.activation_spec()

    def need(n: fx.Node) -> None:
        if not meta.is_annotated(n) and _is_float_tensor(n):
            meta.set_qspec(n, act_spec)

    for node in gm.graph.nodes:
        if node.op != "call_function" or not _is_float_tensor(node):
            continue  # integer index arithmetic (positions, masks) is not quantized
        rule = rule_for(node)
        if rule is None:
            if not is_dequantize(node):
                meta.set_float_reason(node, f"no integer kernel for {node.target}; runs in float")
            continue
        if meta.is_annotated(node):  # an activation fused by its producer
            continue
        if not _quantize_weights(node, rule, config, requested):
            continue
        if rule.output == SHARE:
            sources = rule.activation_inputs(node) or [w for w, _ in rule.weight_inputs(node)]
            if sources and meta.is_annotated(sources[0]):
                meta.set_share(node, sources[0])
            continue
        for inp in rule.activation_inputs(node):
            need(inp)
        act = _fusable_activation(node) if rule.fuses_activation else None
        if act is not None:
            meta.set_fused_into(node, act)
            meta.set_qspec(act, act_spec)
        else:
            meta.set_qspec(node, act_spec)
    _drop_unconsumed(gm)


def _annotate_weights_only(gm: fx.GraphModule, config: QuantConfig, requested: set[str]) -> None:
    """activations="float" / "dynamic": only the weights of ops with a lowering for float / run-time
    quantized inputs (Linear) are quantized; nothing is calibrated, everything else stays float."""
    form = config.activations
    for node in gm.graph.nodes:
        rule = rule_for(node)
        if rule is None or (rule.kind, form) not in LOWERINGS or not _is_float_tensor(node):
            continue
        if not _quantize_weights(node, rule, config, requested):
            continue
        if form == "dynamic":
            meta.set_dynamic_inputs(node)


def _quantize_weights(node: fx.Node, rule, config: QuantConfig, requested: set[str]) -> bool:
    """Annotate the layer's weights at its width, or record why the layer stays float (then False)."""
    reason, width = _layer_decision(node, rule, config, requested)
    if reason:
        meta.set_float_reason(node, reason)
        return False
    for w, axis in rule.weight_inputs(node):
        spec = config.weight_spec(axis, width)
        _check_groups(node, w, spec)
        meta.set_qspec(w, spec)
    return True


def _check_groups(node: fx.Node, w: fx.Node, spec) -> None:
    k = shapes.shape(w)[-1]
    if spec.group_size is not None and k % spec.group_size:
        src = meta.source(node)
        raise UsageError(f"group_size {spec.group_size} does not divide the input size {k} of layer "
                         f"{meta.origin(node) or node.name} ({src.short() if src else 'weight'} {shapes.shape(w)}): choose a group size that "
                         "divides every Linear layer's input size, or group_size=None (per channel)")


_ANNOTATORS = {"static": _annotate_static, "float": _annotate_weights_only, "dynamic": _annotate_weights_only}
_FLOAT_WIDTH_REASON = "weights kept float by the bit-width choice (choose-bitwidth or QuantConfig.layer_bits)"


def _layer_decision(node: fx.Node, rule, config: QuantConfig, requested: set[str]) -> tuple[str | None, int | None]:
    """(why the op stays float, or None; its weight width)."""
    reason = rule.unsupported(node) or _requested_float(node, config, requested)
    width = _weight_width(node, config, requested) if rule.weight_args and not reason else None
    return (_FLOAT_WIDTH_REASON, None) if width == FLOAT else (reason, width)


def layer_names(node: fx.Node) -> list[str]:
    """Every name a user may call a layer by, the report's `layer` column first (the activation fused into
    the op, if any), then the op's own name and its module path."""
    rule = rule_for(node)
    act = _fusable_activation(node) if rule is not None and rule.fuses_activation else None
    names = [meta.origin(n) or n.name for n in (act, node) if n is not None]
    src = meta.source(node)
    return names + ([src.module_path] if src is not None and src.module_path else [])


def _requested_float(node: fx.Node, config: QuantConfig, requested: set[str]) -> str | None:
    """The user's reason to keep this op float (QuantConfig.float_layers)."""
    named = [name for name in layer_names(node) if config.float_reason(name) is not None]
    requested.update(named)  # a layer may be listed under several of its names
    return config.float_reason(named[0]) if named else None


def _weight_width(node: fx.Node, config: QuantConfig, requested: set[str]) -> int | str:
    """A layer's weight width: the user's pin (QuantConfig.layer_bits), else the chooser's, else the config's."""
    names = layer_names(node)
    pinned = config.pinned_width(*names)
    if pinned is not None:
        requested.update(n for n in names if n in dict(config.layer_bits))
        return pinned
    return meta.weight_bits(node) or config.default_weight_bits


def _consumes_quantized(user: fx.Node) -> bool:
    """Whether `user` will read the integer form of its input after fuse-qdq."""
    rule = rule_for(user)
    if rule is None or meta.float_reason(user) is not None:
        return False
    if rule.kind in FLOAT_OUTPUT_KINDS:
        return True  # conv/linear are lowered even when their output stays float
    return meta.is_annotated(user) or meta.fused_into(user) is not None


def _drop_unconsumed(gm: fx.GraphModule) -> None:
    """Keep a tensor in float when nothing downstream reads it quantized.

    Requantizing a value that is dequantized at once only adds error: a conv/linear feeding a float op
    (or the graph output) then produces its float result straight from the int32 accumulator, and an
    add/activation feeding only float ops stays float. This is what keeps a transformer's outlier-heavy
    residual stream (linear -> add -> LayerNorm) accurate. Reverse order settles chains in one sweep.
    """
    for node in reversed(gm.graph.nodes):
        if node.op == "get_attr" or not meta.is_annotated(node):
            continue
        if any(_consumes_quantized(u) for u in node.users):
            continue
        meta.clear_quant_annotations(node)
        for inp in node.all_input_nodes:
            if meta.fused_into(inp) == node.name:
                meta.clear_quant_annotations(inp)
