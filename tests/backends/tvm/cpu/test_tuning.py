"""compile(..., target="x86", tune=True) (qcompile/backends/tvm/cpu/tuning.py): records written, then reused
without measuring; whatever the tuner picks, results stay bit-exact with the reference backend."""
import json
import random
from pathlib import Path

import pytest
import torch

import qcompile
from qcompile.backends.tvm.cpu import tuning
from qcompile.backends.tvm.cpu.fused_kernel_rule import Knobs
from tests.models import ConvBnRelu, TinyResNet


@pytest.fixture
def measured(monkeypatch):
    """Every kernel schedule the tuner times, in order (the real measurement still runs)."""
    calls = []
    real = tuning.measure

    def counting(func, target, sizes):
        calls.append(func)
        return real(func, target, sizes)

    monkeypatch.setattr(tuning, "measure", counting)
    return calls


def _resnet():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    return TinyResNet().eval(), (x,), [x, torch.randn(1, 3, 32, 32)]


def _records(cache) -> dict:
    (path,) = cache.glob("*.json")
    return json.loads(path.read_text())["records"]


def test_first_tuned_compile_writes_records_and_the_next_reuses_them(tmp_path, measured):
    model, ex, cal = _resnet()
    ref = qcompile.compile(model, ex, target="reference", calibration=cal, progress=False)
    tuned = dict(target="x86", calibration=cal, progress=False, tune=True, tune_trials=2, tune_cache=tmp_path)

    first = qcompile.compile(model, ex, **tuned)
    summary = first.report().extra["tuning"]
    records = _records(tmp_path)
    # A kernel that occurs twice in the model is tuned once: the second is already in the records.
    assert measured and summary["tuned"] == len(records)
    kinds = {r["kind"] for r in records.values()}
    assert kinds == {"gemm", "fused"}
    assert all(r["trials"] <= 2 for r in records.values())
    assert torch.equal(first(*ex), ref(*ex))

    measured.clear()
    saved = Path(summary["records"]).read_bytes()
    second = qcompile.compile(model, ex, **tuned)
    assert not measured  # every kernel's schedule came from the records
    assert second.report().extra["tuning"]["tuned"] == 0
    assert second.report().extra["tuning"]["reused"] == summary["tuned"] + summary["reused"]
    assert Path(summary["records"]).read_bytes() == saved
    probe = torch.randn(1, 3, 32, 32)
    assert torch.equal(second(probe), ref(probe)) and torch.equal(second(probe), first(probe))


def test_any_choice_of_the_tuner_stays_bit_exact(tmp_path, monkeypatch):
    # Random "timings" make the tuner pick arbitrary knobs and tiles; only the loops may change.
    rng = random.Random(0)
    monkeypatch.setattr(tuning, "measure", lambda func, target, sizes: rng.uniform(1.0, 100.0))
    model, ex, cal = _resnet()
    ref = qcompile.compile(model, ex, target="reference", calibration=cal, progress=False)
    cm = qcompile.compile(model, ex, target="x86", calibration=cal, progress=False,
                          tune=True, tune_trials=8, tune_cache=tmp_path)
    knobs = [Knobs(**r["choice"]) for r in _records(tmp_path).values() if r["kind"] == "fused"]
    assert any(k != Knobs() for k in knobs)  # the search left the defaults
    for _ in range(3):
        probe = torch.randn(1, 3, 32, 32)
        assert torch.equal(cm(probe), ref(probe))


def test_untuned_compile_never_reads_the_records(tmp_path, monkeypatch):
    monkeypatch.setenv("QCOMPILE_CACHE", str(tmp_path))

    def refuse(*args):
        raise AssertionError("tune=False read the tuning records")

    monkeypatch.setattr(tuning.Records, "__init__", refuse)
    x = torch.randn(2, 3, 8, 8)
    cm = qcompile.compile(ConvBnRelu().eval(), (x,), target="x86", calibration=[x], progress=False)
    assert "tuning" not in cm.report().extra


@pytest.mark.parametrize("options, message", [
    (dict(tune="yes"), "tune must be True or False"),
    (dict(tune=True, tune_trials=0), "tune_trials must be a positive int"),
    (dict(tune=True, tune_trials=2.5), "tune_trials must be a positive int"),
    (dict(tune_trials=4), "pass tune=True too"),
    (dict(tune_cache="somewhere"), "pass tune=True too"),
    (dict(tune=True, tune_cache=123), "tune_cache must be a directory path"),
])
def test_bad_tuning_options_are_refused(options, message):
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(qcompile.UsageError, match=message):
        qcompile.compile(ConvBnRelu().eval(), (x,), target="x86", calibration=[x], progress=False, **options)


def test_a_file_as_the_cache_directory_is_refused(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    (tmp_path / "f").write_text("")
    with pytest.raises(qcompile.UsageError, match="tune_cache must be a directory"):
        qcompile.compile(ConvBnRelu().eval(), (x,), target="x86", calibration=[x], progress=False,
                         tune=True, tune_cache=tmp_path / "f")
