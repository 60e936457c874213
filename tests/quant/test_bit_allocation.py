"""The per-layer bit allocation is an exact integer program: optimal, within budget, pins honoured."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.quant.bit_allocation import (
    Choice,
    InfeasibleBudget,
    LayerChoices,
    allocate,
    budget_bits,
)


def _layer(name, params, costs):
    """costs: bits -> sensitivity; sizes follow the width (float = 32 bits per weight)."""
    return LayerChoices(name, tuple(Choice(b, c, params * (32 if b == "float" else b)) for b, c in costs.items()), params)


def _brute_force(layers, budget, pinned):
    best = None
    for combo in itertools.product(*[layer.choices for layer in layers]):
        if any(layer.name in pinned and c.bits != pinned[layer.name] for layer, c in zip(layers, combo)):
            continue
        if sum(c.size_bits for c in combo) <= budget:
            cost = sum(c.cost for c in combo)
            best = cost if best is None else min(best, cost)
    return best


@settings(max_examples=60, deadline=None)
@given(
    params=st.lists(st.integers(10, 5000), min_size=2, max_size=5),
    costs=st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), min_size=5, max_size=5),
    avg=st.floats(4.0, 9.0),
)
def test_allocation_is_optimal_and_within_budget(params, costs, avg):
    layers = [_layer(f"l{i}", p, {8: c8, 4: c4 + c8, "float": 0.0}) for i, (p, (c8, c4)) in enumerate(zip(params, costs))]
    budget = budget_bits(layers, avg_bits=avg)
    pinned = {"l0": 8}
    want = _brute_force(layers, budget, pinned)
    if want is None:
        with pytest.raises(InfeasibleBudget):
            allocate(layers, budget, pinned)
        return
    got = allocate(layers, budget, pinned)
    chosen = {layer.name: next(c for c in layer.choices if c.bits == got[layer.name]) for layer in layers}
    assert got["l0"] == 8
    assert sum(c.size_bits for c in chosen.values()) <= budget
    assert sum(c.cost for c in chosen.values()) == pytest.approx(want, abs=1e-6)


def test_beats_greedy_when_sizes_differ():
    # Greedy by sensitivity demotes the two least sensitive (small) layers: cost 1.2. Demoting the one
    # big layer saves more bits for cost 1.0, which is the optimum.
    layers = [_layer("big", 1000, {8: 0.0, 4: 1.0}), *[_layer(f"s{i}", 100, {8: 0.0, 4: 0.6}) for i in range(2)]]
    assert allocate(layers, budget=8 * 1200 - 4 * 200) == {"big": 4, "s0": 8, "s1": 8}


def test_budget_is_exact_at_the_boundary_and_bytes_budget():
    layers = [_layer("a", 64, {8: 0.0, 4: 1.0}), _layer("b", 64, {8: 0.0, 4: 2.0})]
    assert allocate(layers, budget_bits(layers, max_bytes=64 + 32)) == {"a": 4, "b": 8}  # exactly fits
    assert allocate(layers, budget_bits(layers, max_bytes=64 + 32 - 1)) == {"a": 4, "b": 4}


def test_infeasible_budget_and_bad_pins_raise_clear_errors():
    layers = [_layer("a", 64, {8: 0.0, 4: 1.0}), _layer("b", 64, {8: 0.0, 4: 2.0})]
    with pytest.raises(InfeasibleBudget, match="smallest possible with the pinned layers is 96 bytes"):
        allocate(layers, budget_bits(layers, max_bytes=80), pinned={"a": 8})
    with pytest.raises(ValueError, match="not quantizable layers: nope"):
        allocate(layers, 10_000, pinned={"nope": 8})
    with pytest.raises(ValueError, match="pinned to 2 bits"):
        allocate(layers, 10_000, pinned={"a": 2})
    with pytest.raises(ValueError, match="exactly one budget"):
        budget_bits(layers, max_bytes=10, avg_bits=4)
