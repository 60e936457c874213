"""Calibration observers (qcompile/quant/observers.py) on realistic data: a normal sample with a few outliers."""
from __future__ import annotations

import pytest
import torch

from qcompile.ir.qspec import QParams, QSpec
from qcompile.quant.config import QuantConfig
from qcompile.quant.math import dequantize_tensor, quantize_tensor
from qcompile.quant.observers import _MAX_SAMPLES, Observer, weight_qparams

OUTLIERS = torch.tensor([25.0, -18.0, 30.0, 22.0, -20.0])


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    """20000 standard-normal activations, five of them replaced by far outliers."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, generator=g)
    x[:5] = OUTLIERS
    return x


def _observe(spec: QSpec, x: torch.Tensor, batches: int = 4) -> QParams:
    obs = Observer(spec)
    for chunk in x.chunk(batches):
        out = obs(chunk.reshape(10, -1))
        assert out is not None and torch.equal(out, chunk.reshape(10, -1))  # observers pass values through
    assert obs.batches == batches
    return obs.qparams()


def _fq(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    s = qp.spec
    q = quantize_tensor(x, qp.scale, qp.zero_point, s.qmin, s.qmax, s.torch_dtype, s.axis)
    return dequantize_tensor(q, qp.scale, qp.zero_point, s.axis)


def _mse(x: torch.Tensor, qp: QParams) -> float:
    return float(((_fq(x, qp) - x) ** 2).mean())


def _range(qp: QParams) -> tuple[float, float]:
    scale, zp = qp.scalar()
    return (qp.spec.qmin - zp) * scale, (qp.spec.qmax - zp) * scale


# ------------------------------------------------------------------------------------------ minmax
def test_minmax_covers_the_range_exactly(data):
    qp = _observe(QSpec("uint8", observer="minmax"), data)
    scale, zp = qp.scalar()
    lo, hi = float(data.min()), float(data.max())
    assert (lo, hi) == (-20.0, 30.0)
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-6)
    assert zp == round(-lo / scale)
    rlo, rhi = _range(qp)
    assert rlo == pytest.approx(lo, abs=scale / 2) and rhi == pytest.approx(hi, abs=scale / 2)
    # Nothing is clipped: every value, outliers included, is within half a step.
    err = (_fq(data, qp) - data).abs()
    assert float(err.max()) <= scale / 2 * (1 + 1e-5)


def test_minmax_streams_over_batches(data):
    one = _observe(QSpec("uint8"), data, batches=1)
    many = _observe(QSpec("uint8"), data, batches=8)
    assert one.same_as(many)


def test_minmax_symmetric_int8(data):
    qp = _observe(QSpec("int8", symmetric=True), data)
    scale, zp = qp.scalar()
    assert zp == 0
    assert scale == pytest.approx(30.0 / 127.5, rel=1e-6)
    narrow = _observe(QSpec("int8", symmetric=True, narrow=True), data)
    assert narrow.scalar()[0] == pytest.approx(30.0 / 127, rel=1e-6)
    assert narrow.scalar()[1] == 0


def test_minmax_positive_only_data_keeps_zero_exact():
    x = torch.rand(1000, generator=torch.Generator().manual_seed(1)) * 3 + 1  # [1, 4]: range widened to 0
    qp = _observe(QSpec("uint8"), x)
    scale, zp = qp.scalar()
    assert zp == 0
    assert scale == pytest.approx(float(x.max()) / 255, rel=1e-6)


# ------------------------------------------------------------------------------------------ percentile
def test_percentile_clips_outliers(data):
    mm = _observe(QSpec("uint8", observer="minmax"), data)
    pc = _observe(QSpec("uint8", observer="percentile", percentile=99.9), data)
    mm_scale, _ = mm.scalar()
    scale, zp = pc.scalar()
    rlo, rhi = _range(pc)
    bulk = data[5:]
    q_lo, q_hi = torch.quantile(bulk, 0.001).item(), torch.quantile(bulk, 0.999).item()
    # The range ends near the 0.1% / 99.9% quantiles, far inside the outliers.
    assert rhi == pytest.approx(q_hi, abs=0.1) and rlo == pytest.approx(q_lo, abs=0.1)
    assert rhi < 5 and rlo > -5
    assert scale < mm_scale / 4
    # Outliers saturate...
    q = quantize_tensor(OUTLIERS, pc.scale, pc.zero_point, 0, 255, torch.uint8)
    assert q.tolist() == [255, 0, 255, 255, 0]
    # ... and the bulk of the distribution is represented much more precisely than by min-max.
    assert _mse(bulk, pc) < _mse(bulk, mm) / 4


def test_percentile_100_is_minmax(data):
    mm = _observe(QSpec("uint8"), data)
    p100 = _observe(QSpec("uint8", observer="percentile", percentile=100.0), data)
    assert p100.same_as(mm)


def test_percentile_bounded_memory_on_large_data():
    g = torch.Generator().manual_seed(2)
    obs = Observer(QSpec("uint8", observer="percentile", percentile=99.0))
    big = torch.randn(8, 1 << 18, generator=g)
    for b in big:
        obs(b)
    assert sum(s.numel() for s in obs.samples) <= _MAX_SAMPLES
    _, rhi = _range(obs.qparams())
    assert rhi == pytest.approx(torch.quantile(big[0], 0.99).item(), abs=0.05)


# ------------------------------------------------------------------------------------------ mse / entropy
@pytest.mark.parametrize("spec_kw", [{"dtype": "uint8"}, {"dtype": "int8", "symmetric": True}, {"dtype": "int4"}])
def test_mse_error_not_worse_than_minmax(data, spec_kw):
    mm = _observe(QSpec(observer="minmax", **spec_kw), data)
    ms = _observe(QSpec(observer="mse", **spec_kw), data)
    assert _mse(data, ms) <= _mse(data, mm)
    assert ms.scalar()[0] <= mm.scalar()[0] * (1 + 1e-6)  # it only ever shrinks the range


def test_mse_shrinks_range_with_outliers(data):
    mm = _observe(QSpec("uint8", observer="minmax"), data)
    ms = _observe(QSpec("uint8", observer="mse"), data)
    assert ms.scalar()[0] < mm.scalar()[0]
    assert _mse(data, ms) < _mse(data, mm)


def test_entropy_clips_outliers(data):
    mm = _observe(QSpec("int8", symmetric=True), data)
    en = _observe(QSpec("int8", symmetric=True, observer="entropy"), data)
    scale, zp = en.scalar()
    assert zp == 0
    _, rhi = _range(en)
    assert 2.5 < rhi < 10  # well beyond the bulk (|x| < ~4.5), well short of the outliers (18..30)
    assert scale < mm.scalar()[0] / 2
    assert _mse(data[5:], en) < _mse(data[5:], mm)


def test_entropy_keeps_full_range_of_uniform_data():
    x = torch.rand(20000, generator=torch.Generator().manual_seed(3)) * 2 - 1
    mm = _observe(QSpec("int8", symmetric=True), x)
    en = _observe(QSpec("int8", symmetric=True, observer="entropy"), x)
    assert en.scalar()[0] == pytest.approx(mm.scalar()[0], rel=0.02)


# ------------------------------------------------------------------------------------------ weights (per channel)
@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(8, 4, 3, 3, generator=g)
    return w * torch.logspace(-2, 1, 8).reshape(-1, 1, 1, 1)  # channel magnitudes over three decades


def test_per_channel_weight_qparams_symmetric_narrow_int8(weight):
    spec = QuantConfig().weight_spec(axis=0)
    assert (spec.dtype, spec.symmetric, spec.narrow, spec.axis) == ("int8", True, True, 0)
    qp = weight_qparams(weight, spec)
    assert qp.per_channel
    assert qp.scale.shape == (8,) and qp.zero_point.shape == (8,)
    assert qp.zero_point.dtype == torch.int32 and bool((qp.zero_point == 0).all())
    amax = weight.abs().amax(dim=(1, 2, 3))
    torch.testing.assert_close(qp.scale, amax / 127, rtol=1e-6, atol=0)
    q = quantize_tensor(weight, qp.scale, qp.zero_point, spec.qmin, spec.qmax, spec.torch_dtype, axis=0)
    assert q.dtype == torch.int8 and int(q.min()) >= -127 and int(q.max()) <= 127
    # The largest magnitude of every channel maps to +-127.
    assert q.abs().amax(dim=(1, 2, 3)).tolist() == [127] * 8
    err = (dequantize_tensor(q, qp.scale, qp.zero_point, axis=0) - weight).abs().amax(dim=(1, 2, 3))
    assert bool((err <= qp.scale / 2 * (1 + 1e-5)).all())
    # Per-tensor would lose the small channels entirely; per-channel keeps them.
    with pytest.raises(ValueError):
        qp.scalar()


def test_per_channel_int4_and_per_tensor_weights(weight):
    qp4 = weight_qparams(weight, QuantConfig(bits=4).weight_spec(axis=0))
    assert qp4.spec.dtype == "int4" and (qp4.spec.qmin, qp4.spec.qmax) == (-7, 7)
    torch.testing.assert_close(qp4.scale, weight.abs().amax(dim=(1, 2, 3)) / 7, rtol=1e-6, atol=0)
    assert bool((qp4.zero_point == 0).all())
    per_tensor = weight_qparams(weight, QuantConfig(per_channel=False).weight_spec(axis=0))
    scale, zp = per_tensor.scalar()
    assert zp == 0 and scale == pytest.approx(float(weight.abs().max()) / 127, rel=1e-6)


def test_per_channel_on_other_axis_and_estimator_fallbacks(weight):
    w = weight.transpose(0, 1).contiguous()  # channels on axis 1
    qp = weight_qparams(w, QSpec("int8", symmetric=True, axis=1, narrow=True))
    assert qp.scale.shape == (8,)
    torch.testing.assert_close(qp.scale, w.abs().amax(dim=(0, 2, 3)) / 127, rtol=1e-6, atol=0)
    # Percentile per channel falls back to min-max; mse per channel is refused.
    pc = weight_qparams(weight, QSpec("int8", symmetric=True, axis=0, narrow=True, observer="percentile"))
    assert pc.same_as(weight_qparams(weight, QSpec("int8", symmetric=True, axis=0, narrow=True)))
    with pytest.raises(ValueError, match="mse"):
        weight_qparams(weight, QSpec("int8", symmetric=True, axis=0, narrow=True, observer="mse"))


def test_observer_without_data_raises():
    with pytest.raises(RuntimeError, match="no data"):
        Observer(QSpec()).qparams()


# ------------------------------------------------------------------------------------------ histogram
@pytest.mark.parametrize("observer", ["histogram", "percentile"])
@pytest.mark.parametrize("spec_kw", [{"dtype": "uint8"}, {"dtype": "int8", "symmetric": True}])
def test_histogram_range_does_not_depend_on_batching_or_order(data, spec_kw, observer):
    spec = QSpec(observer=observer, **spec_kw)
    whole = _observe(spec, data, batches=1)
    shuffled = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(1))]
    for x, batches in ((data, 4), (data, 8), (shuffled, 20)):
        got = _observe(spec, x, batches=batches)
        assert torch.equal(got.scale, whole.scale) and torch.equal(got.zero_point, whole.zero_point)


@pytest.mark.parametrize("dist", ["normal with outliers", "laplace", "relu"])
def test_histogram_range_has_no_more_error_than_minmax(data, dist):
    torch.manual_seed(0)
    x = {"normal with outliers": data, "laplace": torch.distributions.Laplace(0.0, 1.0).sample((20000,)),
         "relu": torch.relu(torch.randn(20000) * 2)}[dist]
    mm = _observe(QSpec("uint8", observer="minmax"), x)
    hist = _observe(QSpec("uint8", observer="histogram"), x)
    assert hist.scalar()[0] <= mm.scalar()[0] * (1 + 1e-6)
    assert _mse(x, hist) <= _mse(x, mm) * 1.02  # the search minimises an estimate of this error


def test_histogram_never_widens_past_the_values_seen():
    x = torch.rand(5000) * 3 + 1  # all positive: the range still includes 0
    qp = _observe(QSpec("uint8", observer="histogram"), x)
    lo, hi = _range(qp)
    assert lo == pytest.approx(0.0, abs=1e-6) and hi <= float(x.max()) + 1e-5
