"""fold-batch-norm: conv2d (conv1d, conv3d, or a [batch, features] linear) -> batch_norm (inference) becomes one conv2d
(linear) with folded weight and bias."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..ir.rewrite import Rewriter, constant
from .base import Pass, PassContext, PassResult, register_pass

aten = torch.ops.aten


def _normalizes_out_channels(layer: fx.Node) -> bool:
    """batch_norm normalizes dim 1: a conv2d's output channels, and a linear's out features only where its
    output is [batch, features] (BatchNorm1d after Linear, as in LeViT)."""
    if layer.target == aten.conv2d.default:
        return True
    val = layer.meta.get("val")
    return layer.target == aten.linear.default and val is not None and val.dim() == 2


def _squeezed_height(node: fx.Node) -> fx.Node | None:
    """conv1d is a conv2d of height 1 followed by squeeze(2) (frontend/canonical.py)."""
    if node.target == aten.squeeze.dim and node.args[1] == 2:
        return node.args[0]
    return None


def _depth_unfolded(node: fx.Node) -> fx.Node | None:
    """conv3d is a conv2d over depth windows whose [n * od, o, oh, ow] output is reshaped to [n, od, o, oh, ow]
    and permuted to [n, o, od, oh, ow] (frontend/canonical.py): the channels stay the conv2d's."""
    if node.target != aten.permute.default or list(node.args[1]) != [0, 2, 1, 3, 4]:
        return None
    inner = node.args[0]
    if isinstance(inner, fx.Node) and inner.target == aten.reshape.default and len(inner.users) == 1:
        return inner.args[0]
    return None


# Views between a conv2d and the batch_norm over its channels: each gives the node it views, or None.
_CHANNEL_VIEWS = (_squeezed_height, _depth_unfolded)


def _layer_of(bn: fx.Node) -> tuple[fx.Node, bool] | None:
    """(the layer batch_norm normalizes, whether a channel view lies between them): a conv2d or linear
    (_normalizes_out_channels), or a conv2d behind one of _CHANNEL_VIEWS (conv1d, conv3d)."""
    layer = bn.args[0]
    if not isinstance(layer, fx.Node) or len(layer.users) != 1:
        return None
    for view in _CHANNEL_VIEWS:
        inner = view(layer)
        if isinstance(inner, fx.Node) and inner.target == aten.conv2d.default and len(inner.users) == 1:
            return inner, True
    return (layer, False) if _normalizes_out_channels(layer) else None


def _foldable(bn: fx.Node) -> bool:
    if bn.target != aten.batch_norm.default or bn.args[5]:  # training
        return False
    found = _layer_of(bn)
    return (
        found is not None
        and found[0].args[1].op == "get_attr"
        and all(isinstance(a, fx.Node) and a.op == "get_attr" for a in bn.args[1:5] if a is not None)
    )


def fold(w: torch.Tensor, b: torch.Tensor | None, gamma, beta, mean, var, eps: float):
    std = torch.sqrt(var + eps)
    gamma = torch.ones_like(mean) if gamma is None else gamma
    beta = torch.zeros_like(mean) if beta is None else beta
    factor = gamma / std
    w_f = w * factor.reshape(-1, *([1] * (w.dim() - 1)))
    b_f = (-mean if b is None else b - mean) * factor + beta
    return w_f, b_f


@register_pass
@dataclass(frozen=True)
class FoldBatchNormPass(Pass):
    name = "fold-batch-norm"
    invalidates = frozenset({"qparams"})  # the folded weights are new tensors

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        rw = Rewriter(gm, self.name)
        changed = False
        for bn in list(gm.graph.nodes):
            if bn.op != "call_function" or not _foldable(bn):
                continue
            conv, behind_view = _layer_of(bn)
            x, w_node = conv.args[0], conv.args[1]
            b_node = conv.args[2] if len(conv.args) > 2 else None
            tensors = [constant(gm, a) if a is not None else None for a in bn.args[1:5]]
            w_f, b_f = fold(
                constant(gm, w_node).detach(), constant(gm, b_node).detach() if b_node is not None else None,
                *(t.detach() if t is not None else None for t in tensors), float(bn.args[7]),
            )
            new_w = rw.const(w_f, f"{w_node.target}_folded", conv)
            new_b = rw.const(b_f, f"{w_node.target}_folded_bias", conv)
            args = (x, new_w, new_b, *conv.args[3:])
            folded = rw.call(conv.target, args, conv, represents=bn)
            if behind_view:  # the view now reads the folded conv, and stands for the batch_norm
                conv.replace_all_uses_with(folded)
                bn.replace_all_uses_with(bn.args[0])
            else:
                folded.meta.update({k: v for k, v in bn.meta.items() if k == "val"})
                bn.replace_all_uses_with(folded)
            ctx.count(self.name, "folded")
            changed = True
        return PassResult(rw.finish() if changed else gm, changed)
