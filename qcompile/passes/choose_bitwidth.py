"""choose-bitwidth: each layer's weight width (8, 4 or float) by measured sensitivity under a size budget.

Runs on the float graph before calibrate: the measurement quantizes one layer's weights at a time (all
else float) on calibration data, and the allocation is solved exactly (quant/bit_allocation.py). The
decision is written on each op (meta.weight_bits), which calibrate's annotation then follows; pins in
QuantConfig.layer_bits and the first/last-layer policy are honoured. Active when bits="mixed", or when
the pass is given a budget itself.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import fx

from ..errors import UsageError
from ..ir import meta
from ..quant.annotate import layer_names
from ..quant.bit_allocation import Choice, LayerChoices, allocate, budget_bits
from ..quant.config import FLOAT, LAYER_WIDTHS, MIXED, QuantConfig
from ..quant.sensitivity import Layer, sensitivities, weighted_layers
from ..report import BIT_ALLOCATION
from .base import Pass, PassContext, PassResult, register_pass

INTEGER_WIDTHS = (8, 4)
_STORED_BITS = {8: 8, 4: 4, FLOAT: 32}


def _samples(batches: list[tuple], wanted: int) -> list[tuple]:
    """Whole calibration batches until `wanted` samples (first dim of the first input) are covered."""
    out, seen = [], 0
    for b in batches:
        if seen >= wanted:
            break
        out.append(b)
        seen += b[0].shape[0] if b and b[0].dim() else 1
    return out


@register_pass
@dataclass(frozen=True)
class ChooseBitwidthPass(Pass):
    name = "choose-bitwidth"
    provides = frozenset({"bit-widths"})
    invalidates = frozenset({"qparams"})  # calibrate annotates by the widths chosen here
    repeatable = False
    budget: float = 0.0  # average bits per weight; 0: the config's
    budget_bytes: int = 0  # total weight bytes instead; 0: the config's
    metric: str = ""  # sensitivity estimator (quant/sensitivity.py); empty: the config's
    samples: int = 16  # calibration samples the measurement runs on
    progress: bool = True

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        config = self._config(ctx.config)
        if config.bits != MIXED:
            return PassResult(gm, False)
        if not ctx.calibration:
            raise UsageError('bits="mixed" measures each layer on calibration data: pass calibration=[batch, ...]')
        layers = weighted_layers(gm, config, layer_names)
        if not layers:
            return PassResult(gm, False)
        costs = sensitivities(gm, layers, INTEGER_WIDTHS, config, _samples(ctx.calibration, self.samples), config.sensitivity, self.progress)
        pins = _pins(layers, config)
        options = [_choices(layer, costs[layer.name], {*config.widths, pins.get(layer.name)}) for layer in layers]
        budget = budget_bits(options, max_bytes=config.budget_bytes, avg_bits=config.budget)
        picked = allocate(options, budget, pins)
        for layer in layers:
            meta.set_weight_bits(layer.node, picked[layer.name])
            ctx.count(self.name, f"{picked[layer.name]}-bit layers" if picked[layer.name] != FLOAT else "float layers")
        ctx.records[BIT_ALLOCATION] = _record(layers, costs, picked, config)
        return PassResult(gm, True)

    def _config(self, config: QuantConfig) -> QuantConfig:
        """The compile config, with this pass's own options taking precedence (which makes it mixed)."""
        if self.budget or self.budget_bytes:
            config = dataclasses.replace(
                config, bits=MIXED, budget=self.budget or None, budget_bytes=self.budget_bytes or None)
        return dataclasses.replace(config, sensitivity=self.metric) if self.metric else config


def _choices(layer: Layer, costs: dict, widths: set) -> LayerChoices:
    """The layer's candidates among `widths` (the config's, plus what the layer is pinned to)."""
    return LayerChoices(
        layer.name,
        tuple(Choice(bits, costs[bits], layer.params * _STORED_BITS[bits]) for bits in LAYER_WIDTHS if bits in widths),
        layer.params,
    )


def _pins(layers: list[Layer], config: QuantConfig) -> dict[str, int | str]:
    """User pins (QuantConfig.layer_bits, by any of a layer's names) and the first/last-layer policy."""
    pins = {layer.name: config.pinned_width(*layer.names) for layer in layers}
    if config.first_last != "auto":
        width = FLOAT if config.first_last == FLOAT else int(config.first_last)
        for layer in (layers[0], layers[-1]):
            pins[layer.name] = pins[layer.name] if pins[layer.name] is not None else width
    return {name: bits for name, bits in pins.items() if bits is not None}


def _record(layers: list[Layer], costs: dict, picked: dict, config: QuantConfig) -> dict:
    """What the report shows: per layer its sensitivity at each width and the width chosen."""
    rows = [{
        "layer": layer.name,
        "module": src.module_path if (src := meta.source(layer.node)) else "",
        "params": layer.params,
        "sensitivity": {str(bits): costs[layer.name][bits] for bits in INTEGER_WIDTHS},
        "bits": picked[layer.name],
        "bytes": (layer.params * _STORED_BITS[picked[layer.name]] + 7) // 8,
    } for layer in layers]
    total = sum(r["params"] for r in rows)
    return {
        "metric": config.sensitivity,
        "budget": {"avg_bits": config.budget, "bytes": config.budget_bytes},
        "avg_bits": sum(r["params"] * _STORED_BITS[r["bits"]] for r in rows) / max(total, 1),
        "layers": rows,
    }
