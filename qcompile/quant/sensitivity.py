"""How far a model's output moves when one layer's weights are quantized: what choose-bitwidth allocates by.

Every estimator returns, per layer and width, the output's noise-to-signal power ratio (or a KL divergence)
caused by quantizing only that layer's weights to that width, all else float. To first order the noise of
different layers adds up, which is what lets the allocation sum per-layer costs.
- "sqnr": measured: sum |y_q - y|^2 / sum |y|^2 over the model's float outputs on calibration data.
- "kl": measured: mean KL(softmax(y) || softmax(y_q)) over the last dim (classifiers' logits).
- "hessian": estimated without quantizing anything: the trace of the output's Gauss-Newton matrix with
  respect to the weights (Hutchinson: E|J v|^2 over random sign vectors v, by forward-mode AD), times
  |w_q - w|^2 / n (HAWQ-v2), over the same signal power as "sqnr".
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx
from torch.utils import _pytree as pytree
from tqdm.auto import tqdm

from ..ir.rewrite import constant
from .config import FLOAT, QuantConfig
from .integer_lowering import LOWERINGS
from .observers import fake_quantize, weight_qparams
from .rules import SHARE, rule_for


@dataclass(frozen=True)
class Layer:
    """A weighted op whose width is to be chosen."""

    node: fx.Node
    weight: fx.Node
    axis: int | None
    names: tuple[str, ...]  # the report's name first, then the op's name and module path (annotate.layer_names)

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def params(self) -> int:
        return self.weight.meta["val"].numel()


def _float_outputs(out) -> list[torch.Tensor]:
    return [t.detach().to(torch.float64) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _run(gm: fx.GraphModule, batches: list[tuple]) -> list[list[torch.Tensor]]:
    with torch.no_grad():
        return [_float_outputs(gm(*b)) for b in batches]


@contextlib.contextmanager
def _weight_replaced(gm: fx.GraphModule, weight: fx.Node, value: torch.Tensor):
    w = constant(gm, weight)
    saved = w.detach().clone()
    with torch.no_grad():
        w.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            w.copy_(saved)


def _signal(reference: list[list[torch.Tensor]]) -> float:
    return max(sum(float((y ** 2).sum()) for ys in reference for y in ys), 1e-30)


# Distances as (numerator, denominator) per batch, so that a cost is sum(num) / sum(den) over batches.
def _noise_to_signal(ys: list[torch.Tensor], qs: list[torch.Tensor]) -> tuple[float, float]:
    return sum(float(((q - y) ** 2).sum()) for y, q in zip(ys, qs)), sum(float((y ** 2).sum()) for y in ys)


def _kl(ys: list[torch.Tensor], qs: list[torch.Tensor]) -> tuple[float, float]:
    total, rows = 0.0, 0
    for y, q in zip(ys, qs):
        p_log, q_log = torch.log_softmax(y, -1), torch.log_softmax(q, -1)
        total += float((p_log.exp() * (p_log - q_log)).sum())
        rows += y.numel() // max(y.shape[-1], 1) if y.dim() else 1
    return total, rows


def _float_env(gm: fx.GraphModule, batch: tuple) -> dict[fx.Node, object]:
    """Every node's float value on one batch."""
    interp = fx.Interpreter(gm, garbage_collect_values=False)
    interp.run(*batch)
    return interp.env


def _suffix_output(gm: fx.GraphModule, batch: tuple, env: dict, layer: "Layer", position: dict) -> list[torch.Tensor]:
    """The outputs recomputed from `layer` on, reusing the float values before it (the layer's own weight
    excepted: it is read again, quantized)."""
    start = position[layer.node]
    prefix = {n: v for n, v in env.items() if position[n] < start and n is not layer.weight}
    return _float_outputs(fx.Interpreter(gm).run(*batch, initial_env=prefix))


def _measured(distance: Callable) -> Callable:
    """An estimator that quantizes each layer at each width and runs the model from that layer on."""

    def estimate(gm, layers, widths, config, batches, progress):
        position = {n: i for i, n in enumerate(gm.graph.nodes)}
        output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
        quantized = {(layer.name, bits): _quantized(constant(gm, layer.weight).detach(), layer, bits, config)
                     for layer in layers for bits in widths}
        num, den = defaultdict(float), defaultdict(float)
        with torch.no_grad():
            for batch in tqdm(batches, desc="sensitivity", unit="batch", disable=not progress, leave=False):
                env = _float_env(gm, batch)
                reference = _float_outputs(env[output])
                for layer in layers:
                    for bits in widths:
                        with _weight_replaced(gm, layer.weight, quantized[layer.name, bits]):
                            n, d = distance(reference, _suffix_output(gm, batch, env, layer, position))
                        num[layer.name, bits] += n
                        den[layer.name, bits] += d
        return {layer.name: {FLOAT: 0.0, **{bits: num[layer.name, bits] / max(den[layer.name, bits], 1e-30) for bits in widths}}
                for layer in layers}

    return estimate


def _quantized(w: torch.Tensor, layer: Layer, bits: int, config: QuantConfig) -> torch.Tensor:
    spec = config.weight_spec(layer.axis, bits)
    return fake_quantize(w, weight_qparams(w, spec))


def _hessian(gm, layers, widths, config, batches, progress, probes: int = 4):
    signal = _signal(_run(gm, batches))
    gen = torch.Generator().manual_seed(0)
    costs = {}
    for layer in tqdm(layers, desc="hessian trace", unit="layer", disable=not progress, leave=False):
        w = constant(gm, layer.weight).detach()
        trace = _gauss_newton_trace(gm, layer.weight.target, w, batches, probes, gen)
        costs[layer.name] = {FLOAT: 0.0}
        for bits in widths:
            err = float(((_quantized(w, layer, bits, config) - w).double() ** 2).sum())
            costs[layer.name][bits] = trace / w.numel() * err / signal
    return costs


def _gauss_newton_trace(gm, target: str, w: torch.Tensor, batches, probes: int, gen) -> float:
    """Hutchinson's estimate of tr(J^T J), J the Jacobian of the outputs with respect to w."""
    total = 0.0
    for _ in range(probes):
        v = (torch.randint(0, 2, w.shape, generator=gen) * 2 - 1).to(w.dtype)
        for b in batches:
            def f(weight, b=b):
                out = torch.func.functional_call(gm, {target: weight}, b)
                return tuple(t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point())
            _, jv = torch.func.jvp(f, (w,), (v,))
            total += sum(float((t.detach().double() ** 2).sum()) for t in jv)
    return total / probes


ESTIMATORS: dict[str, Callable] = {
    "sqnr": _measured(_noise_to_signal),
    "kl": _measured(_kl),
    "hessian": _hessian,
}


def weighted_layers(gm: fx.GraphModule, config: QuantConfig, names_of: Callable[[fx.Node], list[str]]) -> list[Layer]:
    """The ops whose weights get a width: quantizable conv/linear-like ops with constant weights."""
    layers = []
    for node in gm.graph.nodes:
        rule = rule_for(node)
        if rule is None or not rule.weight_args or rule.output == SHARE or rule.unsupported(node):
            continue
        if (rule.kind, config.activations) not in LOWERINGS:  # e.g. convs under weight-only (Linear) modes
            continue
        names = names_of(node)
        if any(config.float_reason(n) is not None for n in names):
            continue
        (w, axis), = rule.weight_inputs(node)
        layers.append(Layer(node, w, axis, tuple(names)))
    return layers


def _stacked(gm: fx.GraphModule, batches: list[tuple]) -> list[tuple]:
    """The batches as one, which runs many times faster than sample by sample, when the graph takes it; a
    graph that hard-coded the example's batch size (a view to fixed sizes) does not, and gets them as given."""
    if len(batches) < 2 or any(not isinstance(t, torch.Tensor) or t.dim() == 0 for b in batches for t in b):
        return batches
    try:
        stacked = tuple(torch.cat(parts) for parts in zip(*batches))
        with torch.no_grad():
            gm(*stacked)
    except RuntimeError:
        return batches
    return [stacked]


def sensitivities(gm, layers: list[Layer], widths, config: QuantConfig, batches, metric: str, progress: bool = True) -> dict:
    """layer name -> {width: cost} with cost 0 for FLOAT."""
    return ESTIMATORS[metric](gm, layers, widths, config, _stacked(gm, batches), progress)
