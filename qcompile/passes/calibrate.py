"""calibrate: annotate quantized tensors, observe them on calibration data, record their QParams."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import fx
from tqdm.auto import tqdm

from ..errors import UsageError
from ..ir import meta
from ..quant.annotate import annotate, share_root
from ..quant.math import check_finite
from ..quant.observers import Observer, weight_qparams
from ..ir.rewrite import constant
from .base import Pass, PassContext, PassResult, register_pass


class _ObservingInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, observers: dict[fx.Node, Observer]):
        super().__init__(gm)
        self.observers = observers

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        obs = self.observers.get(n)
        if obs is not None:
            obs(out)
        return out


def as_batch(batch) -> tuple:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def validate_calibration(batches) -> list[tuple]:
    """Materialise the batches and reject NaN/Inf before anything is changed."""
    out = []
    for b, batch in enumerate(batches):
        tensors = as_batch(batch)
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"calibration batch {b}, input {i}: expected a tensor, got {type(t).__name__}")
            check_finite(t, f"calibration batch {b}, input {i}")
        out.append(tensors)
    return out


@register_pass
@dataclass(frozen=True)
class CalibratePass(Pass):
    name = "calibrate"
    method: str = ""  # activation observer; empty: the compile config's
    percentile: float = 0.0  # 0: the compile config's
    progress: bool = True

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        overrides = {k: v for k, v in (("method", self.method), ("percentile", self.percentile)) if v}
        config = dataclasses.replace(ctx.config, **overrides)
        annotate(gm, config)
        by_name = {n.name: n for n in gm.graph.nodes}
        observers = {
            n: Observer(meta.qspec(n))
            for n in gm.graph.nodes
            if meta.qspec(n) is not None and n.op != "get_attr"
        }
        if observers:
            if not ctx.calibration:
                raise UsageError(
                    "activations are to be quantized but no calibration data was given: pass "
                    "calibration=[batch, ...] (each batch a tensor or a tuple of model inputs), "
                    "e.g. calibration=[example_inputs]"
                )
            batches = validate_calibration(ctx.calibration)
            interp = _ObservingInterpreter(gm, observers)
            with torch.no_grad():
                for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not self.progress, leave=False):
                    interp.run(*batch)
        for n in gm.graph.nodes:
            if n in observers:
                meta.set_qparams(n, observers[n].qparams())
            elif n.op == "get_attr" and meta.qspec(n) is not None:
                meta.set_qparams(n, weight_qparams(constant(gm, n).detach(), meta.qspec(n)))
        for n in gm.graph.nodes:
            if meta.share_source(n) is not None:
                meta.set_qparams(n, meta.qparams(share_root(n, by_name)))
        ctx.count(self.name, "observed activations", len(observers))
        ctx.count(self.name, "batches", len(ctx.calibration or []))
        return PassResult(gm, True)
