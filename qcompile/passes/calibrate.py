"""calibrate: annotate quantized tensors, observe them on calibration data, record their QParams."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import fx
from tqdm.auto import tqdm

from ..errors import UsageError
from ..ir import meta
from ..ir.rewrite import Rewriter, constant
from ..quant.annotate import annotate, share_root
from ..quant.gptq import GramObserver, gptq
from ..quant.math import check_finite
from ..quant.observers import Observer, weight_qparams
from ..quant.rules import rule_for
from .base import Pass, PassContext, PassResult, register_pass


class _ObservingInterpreter(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, observers: list[dict[fx.Node, torch.nn.Module]]):
        super().__init__(gm)
        self.observers = observers

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        for observers in self.observers:
            if n in observers:
                observers[n](out)
        return out


def _gptq_weights(gm: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """Weight -> the input of the Linear that reads it, for the weights that GPTQ rounds."""
    found = {}
    for node in gm.graph.nodes:
        rule = rule_for(node)
        if rule is None or rule.kind != "linear":
            continue
        for w, _ in rule.weight_inputs(node):
            if meta.qspec(w) is not None and meta.qspec(w).observer == "gptq":
                found[w] = rule.activation_inputs(node)[0]
    return found


def _apply_gptq(gm: fx.GraphModule, weights: dict[fx.Node, fx.Node], grams: dict[fx.Node, GramObserver], name: str) -> None:
    """Each weight replaced by its GPTQ-rounded copy (the float model's own tensor is left untouched)."""
    rw = Rewriter(gm, name)
    for w, x in weights.items():
        spec = meta.qspec(w)
        rounded, qp = gptq(constant(gm, w), grams[x].gram, spec)
        new = rw.const(rounded, f"{w.name}_gptq", w)
        w.replace_all_uses_with(new)
        meta.set_qspec(new, spec)
        meta.set_qparams(new, qp)
    rw.finish()


def _check_calibration(ctx: PassContext, observers: dict, grams: dict) -> None:
    if (observers or grams) and not ctx.calibration:
        needs = "activations are to be quantized" if observers else "weight_method='gptq' measures the Linear inputs"
        raise UsageError(
            f"{needs} but no calibration data was given: pass "
            "calibration=[batch, ...] (each batch a tensor or a tuple of model inputs), "
            "e.g. calibration=[example_inputs]"
        )


def _observed(n: fx.Node, observer: Observer):
    try:
        return observer.qparams()
    except UsageError as exc:
        src = meta.source(n)
        raise UsageError(f"{meta.origin(n) or n.name}{f' ({src.short()})' if src else ''}: {exc}") from None


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
    provides = frozenset({"qparams"})
    repeatable = False
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
        gptq_weights = _gptq_weights(gm)
        grams = {x: GramObserver() for x in gptq_weights.values()}
        _check_calibration(ctx, observers, grams)
        if observers or grams:
            batches = validate_calibration(ctx.calibration)
            interp = _ObservingInterpreter(gm, [observers, grams])
            with torch.no_grad():
                for batch in tqdm(batches, desc="calibrate", unit="batch", disable=not self.progress, leave=False):
                    interp.run(*batch)
        for n in gm.graph.nodes:
            if n in observers:
                meta.set_qparams(n, _observed(n, observers[n]))
            elif n.op == "get_attr" and meta.qspec(n) is not None and n not in gptq_weights:
                meta.set_qparams(n, weight_qparams(constant(gm, n).detach(), meta.qspec(n)))
        if gptq_weights:
            _apply_gptq(gm, gptq_weights, grams, self.name)
        for n in gm.graph.nodes:
            if meta.share_source(n) is not None:
                meta.set_qparams(n, meta.qparams(share_root(n, by_name)))
        ctx.count(self.name, "observed activations", len(observers))
        ctx.count(self.name, "GPTQ-rounded weights", len(gptq_weights))
        ctx.count(self.name, "batches", len(ctx.calibration or []))
        return PassResult(gm, True)
