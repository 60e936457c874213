"""The one small rewrite helper passes use: create constants and nodes with provenance, replace uses."""
from __future__ import annotations

import hashlib
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
        self._shared: dict[tuple, str] = {}

    def const(self, tensor: torch.Tensor, hint: str, anchor: fx.Node, share: bool = False) -> fx.Node:
        """Register `tensor` as a buffer and return a get_attr node for it, placed before `anchor`. With
        `share`, a tensor equal to one registered before by this rewriter with `share` reuses its buffer
        (a weight used at every step of an unrolled recurrent layer is stored once)."""
        key = (tensor.dtype, tuple(tensor.shape), _digest(tensor)) if share else None
        name = self._shared.get(key) if share else None
        if name is None:
            name = self._register(tensor, hint)
            if share:
                self._shared[key] = name
        with self.graph.inserting_before(anchor):
            node = self.graph.get_attr(name)
        meta.inherit(node, anchor, self.pass_name)
        return node

    def _register(self, tensor: torch.Tensor, hint: str) -> str:
        base = re.sub(r"\W", "_", hint) or "const"
        name, i = base, 0
        while hasattr(self.gm, name):
            i += 1
            name = f"{base}_{i}"
        self.gm.register_buffer(name, tensor.detach().clone())
        return name

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

    def cast(self, x: fx.Node, dtype: torch.dtype, anchor: fx.Node, like: fx.Node | None = None) -> fx.Node:
        """x converted to `dtype` (aten._to_copy), placed before `anchor`."""
        node = self.call(torch.ops.aten._to_copy.default, (x,), anchor, like=like)
        node.kwargs = {"dtype": dtype}
        return node

    def finish(self) -> fx.GraphModule:
        self.graph.eliminate_dead_code()
        remove_unused_attributes(self.gm)
        self.graph.lint()
        self.gm.recompile()
        return self.gm


def _digest(tensor: torch.Tensor) -> bytes:
    return hashlib.sha256(tensor.detach().contiguous().flatten().view(torch.uint8).numpy().tobytes()).digest()


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
