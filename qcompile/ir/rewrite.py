"""The one small rewrite helper passes use: create constants and nodes with provenance, replace uses."""
from __future__ import annotations

import re

import torch
from torch import fx

from . import meta


class Rewriter:
    """Builds replacement nodes in front of `anchor`, each inheriting the anchor's provenance."""

    def __init__(self, gm: fx.GraphModule, pass_name: str):
        self.gm = gm
        self.graph = gm.graph
        self.pass_name = pass_name

    def const(self, tensor: torch.Tensor, hint: str, anchor: fx.Node) -> fx.Node:
        """Register `tensor` as a buffer and return a get_attr node for it, placed before `anchor`."""
        base = re.sub(r"\W", "_", hint) or "const"
        name, i = base, 0
        while hasattr(self.gm, name):
            i += 1
            name = f"{base}_{i}"
        self.gm.register_buffer(name, tensor.detach().clone())
        with self.graph.inserting_before(anchor):
            node = self.graph.get_attr(name)
        meta.inherit(node, anchor, self.pass_name)
        return node

    def call(
        self, target, args: tuple, anchor: fx.Node, represents: fx.Node | None = None,
        name: str | None = None, like: fx.Node | None = None,
    ) -> fx.Node:
        """A call_function node placed before `anchor`; its provenance comes from `like` (default: the anchor)."""
        with self.graph.inserting_before(anchor):
            node = self.graph.call_function(target, args)
        if name:
            node.name = self.graph._graph_namespace.create_name(name, None)
        meta.inherit(node, like if like is not None else anchor, self.pass_name, represents)
        return node

    def finish(self) -> fx.GraphModule:
        self.graph.eliminate_dead_code()
        remove_unused_attributes(self.gm)
        self.graph.lint()
        self.gm.recompile()
        return self.gm


def constant(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The tensor behind a get_attr node."""
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part)
    return obj


def remove_unused_attributes(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in gm.named_buffers(recurse=False)] + [n for n, _ in gm.named_parameters(recurse=False)]:
        if name not in used:
            delattr(gm, name)
    gm.delete_all_unused_submodules()
