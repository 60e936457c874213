"""Calibration data is checked against the example's signature before any pass runs: a bad batch is the
user's error naming the batch, the input and the shape expected; batches of another size than the example's
work wherever the captured graph allows it."""
import json

import pytest
import safetensors.torch
import torch
from torch import nn
from typer.testing import CliRunner

import qcompile
from qcompile.cli import app
from qcompile.ir import meta


class FlattensByBatch(nn.Module):
    """`x.view(batch, -1)`: the exported graph holds the example's batch size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x, gate):
        return self.fc(x) * gate


@pytest.fixture
def model():
    torch.manual_seed(0)
    return FlattensByBatch().eval()


X1 = torch.randn(1, 3, 8, 8)


def _qparams(cm) -> dict:
    return {n.name: (meta.qparams(n).scale.tolist(), meta.qparams(n).zero_point.tolist())
            for n in cm.graph_module.graph.nodes if meta.qparams(n) is not None}


def test_batches_larger_than_the_example_calibrate_like_single_samples(model):
    torch.manual_seed(1)
    samples = [torch.randn(1, 3, 8, 8) for _ in range(8)]
    batched = qcompile.compile(model, (X1,), calibration=[torch.cat(samples[:4]), torch.cat(samples[4:])], progress=False)
    single = qcompile.compile(model, (X1,), calibration=samples, progress=False)
    assert _qparams(batched) == _qparams(single) and _qparams(batched)
    assert batched.report().extra["stats"]["calibrate"]["batches"] == 8
    assert torch.equal(batched(X1), single(X1))


def test_a_batch_not_a_multiple_of_a_batch_specialized_example_says_what_to_do(model):
    x2 = torch.randn(2, 3, 8, 8)
    with pytest.raises(qcompile.UsageError, match=r"calibration batch 1, input 0 \(x\): expected float32\[2, 3, 8, 8\], "
                       r"got float32\[3, 3, 8, 8\].*batch of 2.*does not run at 3.*dynamic_shapes"):
        qcompile.compile(model, (x2,), calibration=[x2, torch.randn(3, 3, 8, 8)], progress=False)


def test_a_graph_that_does_not_hold_the_batch_calibrates_whole_batches_of_any_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    odd = torch.randn(5, 6)
    cm = qcompile.compile(model, (torch.randn(2, 6),), calibration=[odd], progress=False)
    whole = qcompile.compile(model, (torch.randn(5, 6),), calibration=[odd], progress=False)
    assert _qparams(cm) == _qparams(whole)


@pytest.mark.parametrize("batch, message", [
    (torch.randn(3, 8, 8), r"input 0 \(x\): expected float32\[1, 3, 8, 8\], got float32\[3, 8, 8\]"),  # rank (conv2d would take it)
    (torch.randn(1, 4, 8, 8), r"input 0 \(x\): expected float32\[1, 3, 8, 8\], got float32\[1, 4, 8, 8\]"),  # channels
    (torch.randn(1, 3, 8, 8).double(), r"input 0 \(x\): expected float32\[1, 3, 8, 8\], got float64\[1, 3, 8, 8\]"),  # dtype
    ((X1, X1), r"expected 1 input tensor\(s\) \(x: float32\[1, 3, 8, 8\]\), got 2"),  # count
    ("an image", r"input 0 \(x\): expected a tensor float32\[1, 3, 8, 8\], got str"),
])
def test_a_bad_batch_is_a_usage_error_naming_batch_input_and_expected_shape(model, batch, message):
    with pytest.raises(qcompile.UsageError, match=r"calibration batch 1, " + message):
        qcompile.compile(model, (X1,), calibration=[X1, batch], progress=False)


def test_one_tensor_instead_of_a_list_of_batches(model):
    with pytest.raises(qcompile.UsageError, match=r"calibration is one tensor; pass a list of batches.*split"):
        qcompile.compile(model, (X1,), calibration=torch.randn(4, 3, 8, 8), progress=False)


def test_inputs_of_different_batch_sizes_in_one_batch():
    model = TwoInputs().eval()
    ex = (torch.randn(1, 6), torch.randn(1, 3))
    with pytest.raises(qcompile.UsageError, match=r"different batch sizes: input 0 \(x\) has 4 .*input 1 \(gate\) has 2"):
        qcompile.compile(model, ex, calibration=[(torch.randn(4, 6), torch.randn(2, 3))], progress=False)
    cm = qcompile.compile(model, ex, calibration=[(torch.randn(4, 6), torch.randn(4, 3))], progress=False)
    assert cm.report().extra["stats"]["calibrate"]["batches"] == 4


@qcompile.register_pass
class FailsOnCalibrationData(qcompile.Pass):
    """Raises only on what compile() gave it: positive calibration data and the percentile observer."""

    name = "fails-on-calibration-data"

    def run(self, gm, ctx):
        total = sum(float(b[0].sum()) for b in ctx.calibration)
        if total > 0 and ctx.config.method == "percentile":
            raise RuntimeError(f"calibration sums to {total:.1f} under {ctx.config.method}")
        return qcompile.PassResult(gm, False)


def test_a_reproducer_saves_the_calibration_batches_and_config_and_fails_again(model, tmp_path):
    zeros, ones = torch.zeros(1, 3, 8, 8), torch.ones(2, 3, 8, 8)
    with pytest.raises(qcompile.PassError) as info:
        qcompile.compile(model, (zeros,), calibration=[ones], passes=[FailsOnCalibrationData()], progress=False,
                         config=qcompile.QuantConfig(method="percentile"), dump_dir=tmp_path)
    repro = info.value.reproducer
    saved = safetensors.torch.load_file(str(repro / "calibration.safetensors"))
    assert sorted(saved) == ["batch_0_input_0", "batch_1_input_0"]  # the batch of 2, split to the example's 1
    assert json.loads((repro / "config.json").read_text())["method"] == "percentile"
    result = CliRunner().invoke(app, ["reproduce", str(repro)])
    assert result.exit_code == 1
    assert "raised again: RuntimeError: calibration sums to 384.0 under percentile" in result.output
