"""Weight coverage: the report says how much of the weights is stored as integers and which weighted layers
stayed float and why; such a layer is a FloatWeightsWarning, or an error under compile(strict=True), unless
the config kept it float on purpose."""
import warnings

import pytest
import torch
from torch import nn

import qcompile


class WithConvTranspose3d(nn.Module):
    """conv2d has an integer lowering; conv_transpose3d (for now) has not."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.volume = nn.ConvTranspose3d(8, 4, (1, 2, 2))

    def forward(self, x):
        return self.volume(torch.relu(self.conv(x)).unsqueeze(2))


X = torch.randn(1, 3, 8, 8)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return WithConvTranspose3d().eval()


def _float_weight_warnings(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if issubclass(w.category, qcompile.FloatWeightsWarning)]


def test_a_weighted_layer_left_float_is_a_warning_and_a_report_line(model):
    compiled = []
    messages = _float_weight_warnings(lambda: compiled.append(qcompile.compile(model, (X,), calibration=[X], progress=False)))
    up_params, conv_params = 4 * 8 * 2 * 2, 8 * 27 + 8
    weights = up_params + 4 + conv_params
    assert messages == [f"1 weighted layer(s) stay float, {up_params / weights:.1%} of the model's weights: "
                        f"conv_transpose3d (conv_transpose3d, {up_params} params: no integer kernel for "
                        f"aten.conv_transpose3d.input; runs in float)"]
    report = compiled[0].report()
    cov = report.extra["coverage"]
    assert (cov["weights"], cov["float_weights"]) == (weights, up_params + 4)  # the conv's weight and bias integer
    assert [(r["layer"], r["params"], r["chosen"]) for r in cov["float_layers"]] == [("conv_transpose3d", up_params, False)]
    assert "weighted layers in float: conv_transpose3d" in str(report)


def test_strict_refuses_a_weighted_layer_left_float(model):
    with pytest.raises(qcompile.UsageError, match=r"strict=True: 1 weighted layer\(s\) stay float.*conv_transpose3d"):
        qcompile.compile(model, (X,), calibration=[X], progress=False, strict=True)


def test_layers_the_config_keeps_float_are_listed_but_never_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
    config = qcompile.QuantConfig(float_layers=["linear"])
    compiled = []
    assert _float_weight_warnings(lambda: compiled.append(
        qcompile.compile(model, (X,), calibration=[X], progress=False, strict=True, config=config))) == []
    rows = compiled[0].report().extra["coverage"]["float_layers"]
    assert [(r["layer"], r["chosen"]) for r in rows] == [("linear", True)]


def test_a_fully_integer_model_has_full_coverage_and_no_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
    compiled = []
    assert _float_weight_warnings(lambda: compiled.append(
        qcompile.compile(model, (X,), calibration=[X], progress=False, strict=True))) == []
    weights = (8 * 27 + 8) + (8 * 36 * 4 + 4)
    assert compiled[0].report().coverage_line() == f"coverage: 100.0% of the model's {weights:,} weights stored as integers\n"
