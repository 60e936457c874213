"""Shape/dtype propagation: every node gets meta["val"], a meta-device tensor of its output's shape and dtype."""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode


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


def output_shapes(gm: fx.GraphModule, inputs: list[tuple[list[int], torch.dtype]]) -> list[list[int]] | None:
    """The shapes of the graph's tensor outputs for inputs of these shapes and dtypes, computed on fake
    tensors (no arithmetic); None if the graph cannot run at them (a view of a fixed size, say)."""
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad(), _quiet(_FAKE_LOG):
        fakes = [torch.empty(shape, dtype=dtype) for shape, dtype in inputs]
        try:
            out = fx.Interpreter(gm).run(*fakes)
        except Exception:  # noqa: BLE001  (whatever the op's complaint, the answer is "cannot")
            return None
    flat = out if isinstance(out, (tuple, list)) else [out]
    return [list(o.shape) for o in flat if isinstance(o, torch.Tensor)]


_FAKE_LOG = "torch._subclasses.fake_tensor"  # logs every op that refuses fake inputs, with a traceback


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    was = log.disabled
    log.disabled = True
    try:
        yield
    finally:
        log.disabled = was


def val(node: fx.Node):
    return node.meta.get("val")


def shape(node: fx.Node) -> list[int]:
    return list(node.meta["val"].shape)


def dtype(node: fx.Node) -> torch.dtype | None:
    v = node.meta.get("val")
    return getattr(v, "dtype", None)
