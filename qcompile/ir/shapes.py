"""Shape/dtype propagation: every node gets meta["val"], a meta-device tensor of its output's shape and dtype."""
from __future__ import annotations

import torch
from torch import fx


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor):
            n.meta["val"] = torch.empty(out.shape, dtype=out.dtype, device="meta")
        elif isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
            n.meta["val"] = [torch.empty(o.shape, dtype=o.dtype, device="meta") for o in out]
        return out


def propagate(gm: fx.GraphModule, example_inputs: tuple):
    """Run the graph once on real inputs, recording shapes and dtypes; returns the outputs."""
    with torch.no_grad():
        return _Recorder(gm).run(*example_inputs)


def val(node: fx.Node):
    return node.meta.get("val")


def shape(node: fx.Node) -> list[int]:
    return list(node.meta["val"].shape)


def dtype(node: fx.Node) -> torch.dtype | None:
    v = node.meta.get("val")
    return getattr(v, "dtype", None)
