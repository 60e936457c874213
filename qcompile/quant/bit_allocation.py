"""Per-layer bit widths under a size budget, solved exactly as a 0/1 integer program (scipy's HiGHS MILP).

Each layer offers choices (8-bit, 4-bit, float, ...) with a measured cost (the sensitivity of the model's
output when only that layer is quantized so) and a weight size in bits. The allocation picks one choice per
layer minimising the summed cost subject to the total size budget; pinned layers keep their width. A greedy
pass (repeatedly demoting the least sensitive layer) is not optimal once sizes differ between layers, which
is why this is an integer program: min sum c_ij x_ij, sum_j x_ij = 1 per layer, sum s_ij x_ij <= budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import UsageError


@dataclass(frozen=True)
class Choice:
    bits: int | str  # 8, 4, ... or FLOAT
    cost: float  # sensitivity: lower is better
    size_bits: int  # the layer's stored weights at this width


@dataclass(frozen=True)
class LayerChoices:
    name: str
    choices: tuple[Choice, ...]
    params: int  # weight elements (for an average-bits budget)


class InfeasibleBudget(UsageError):
    """No allocation fits the budget (with the pinned layers as given)."""


def budget_bits(layers: list[LayerChoices], *, max_bytes: int | None = None, avg_bits: float | None = None) -> int:
    """The size budget in bits from exactly one of: total weight bytes, average bits per weight."""
    if (max_bytes is None) == (avg_bits is None):
        raise UsageError("give exactly one budget: max_bytes=... or avg_bits=...")
    if max_bytes is not None:
        return int(max_bytes) * 8
    return int(np.floor(avg_bits * sum(layer.params for layer in layers)))


def allocate(layers: list[LayerChoices], budget: int, pinned: dict[str, int | str] | None = None) -> dict[str, int | str]:
    """layer name -> chosen bits, minimising the summed cost with sum of sizes <= budget (bits)."""
    pinned = dict(pinned or {})
    _check(layers, pinned)
    flat = [(i, c) for i, layer in enumerate(layers) for c in layer.choices]
    cost = np.array([c.cost for _, c in flat], dtype=float)
    size = np.array([c.size_bits for _, c in flat], dtype=float)
    one_per_layer = np.zeros((len(layers), len(flat)))
    for j, (i, _) in enumerate(flat):
        one_per_layer[i, j] = 1.0
    upper = np.array([0.0 if layers[i].name in pinned and c.bits != pinned[layers[i].name] else 1.0 for i, c in flat])
    result = milp(
        cost,
        integrality=np.ones(len(flat)),
        bounds=Bounds(np.zeros(len(flat)), upper),
        constraints=[LinearConstraint(one_per_layer, 1, 1), LinearConstraint(size[None, :], -np.inf, budget)],
    )
    if result.status != 0 or result.x is None:
        raise InfeasibleBudget(_infeasible_message(layers, pinned, budget))
    picked = [flat[j] for j in np.flatnonzero(result.x > 0.5)]
    return {layers[i].name: c.bits for i, c in picked}


def _check(layers: list[LayerChoices], pinned: dict) -> None:
    names = {layer.name for layer in layers}
    unknown = sorted(set(pinned) - names)
    if unknown:
        raise UsageError(f"pinned layers that are not quantizable layers: {', '.join(unknown)}")
    for layer in layers:
        if layer.name in pinned and pinned[layer.name] not in {c.bits for c in layer.choices}:
            raise UsageError(f"layer {layer.name} is pinned to {pinned[layer.name]} bits, "
                             f"not one of its choices {[c.bits for c in layer.choices]}")


def _infeasible_message(layers: list[LayerChoices], pinned: dict, budget: int) -> str:
    smallest = sum(
        min(c.size_bits for c in layer.choices if layer.name not in pinned or c.bits == pinned[layer.name])
        for layer in layers
    )
    return (f"no bit allocation fits the budget of {budget / 8:,.0f} weight bytes: the smallest possible "
            f"with the pinned layers is {smallest / 8:,.0f} bytes; raise the budget or pin fewer layers wide")
