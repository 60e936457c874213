"""QuantConfig refuses fields of the wrong type or range with a UsageError when it is made, never later in a
pass (hypothesis: random values for random fields)."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.quant.config import LAYER_WIDTHS

FIELDS = ["bits", "per_channel", "symmetric_activations", "method", "percentile", "weight_method", "activations",
          "group_size", "budget", "budget_bytes", "first_last", "widths", "sensitivity", "float_layers", "layer_bits"]
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True), st.text(max_size=6),
    st.sampled_from(["minmax", "percentile", "gptq", "static", "dynamic", "float", "mixed", "auto", "8", "sqnr"]),
    st.lists(st.sampled_from([8, 4, "float", 3, "conv"]), max_size=3),
    st.dictionaries(st.sampled_from(["conv", "fc"]), st.sampled_from([8, 4, "float", 2, "why"]), max_size=2),
)


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), ODD, max_size=4))
def test_fuzzed_configs_are_valid_or_a_usage_error(fields):
    try:
        config = qcompile.QuantConfig(**fields)
    except qcompile.UsageError:
        return
    assert isinstance(config.per_channel, bool) and isinstance(config.symmetric_activations, bool)
    assert 50 < config.percentile <= 100
    assert config.budget is None or (math.isfinite(config.budget) and 0 < config.budget <= 32)
    assert config.widths and set(config.widths) <= set(LAYER_WIDTHS)
    assert all(width in LAYER_WIDTHS for _, width in config.layer_bits)
    hash(config)  # frozen and hashable: configs key caches


@pytest.mark.parametrize("fields, message", [
    ({"percentile": None}, r"QuantConfig.percentile must be a number in \(50, 100\], got None"),
    ({"per_channel": "yes"}, r"QuantConfig.per_channel must be True or False"),
    ({"widths": None}, r"QuantConfig.widths must be a sequence of widths"),
    ({"budget": "6", "bits": "mixed"}, r"QuantConfig.budget must be a number of bits or None"),
])
def test_wrong_types_name_the_field(fields, message):
    with pytest.raises(qcompile.UsageError, match=message):
        qcompile.QuantConfig(**fields)
