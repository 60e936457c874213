"""Calibration observers: min-max, histogram (least expected L2 error), percentile, MSE and entropy (KL)
range estimation.

Observers are modules inserted into the graph by the calibrate pass; they pass values through and
keep statistics. The histogram and percentile observers read a histogram whose counts do not depend on how
the calibration data is batched (histogram.py); MSE and entropy work on a bounded random sample of the
values seen. Memory stays flat however much calibration data is used.
"""
from __future__ import annotations

import torch
from torch import nn

from ..ir.qspec import QParams, QSpec
from .histogram import Histogram
from .math import (
    dequantize_groups,
    dequantize_tensor,
    qparams_from_range,
    quantize_groups,
    quantize_tensor,
    weight_groups,
)

_FROM_HISTOGRAM = ("histogram", "percentile")  # observers computed from a Histogram; mse and entropy sample
_SAMPLES_PER_BATCH = 1 << 16
_MAX_SAMPLES = 1 << 21


class Observer(nn.Module):
    def __init__(self, spec: QSpec):
        super().__init__()
        self.spec = spec
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.histogram = Histogram() if spec.observer in _FROM_HISTOGRAM and spec.axis is None else None
        self.batches = 0
        self._gen = torch.Generator().manual_seed(0)

    def _reduce_dims(self, x: torch.Tensor) -> list[int]:
        if self.spec.axis is None:
            return list(range(x.dim()))
        axis = self.spec.axis % x.dim()
        return [d for d in range(x.dim()) if d != axis]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x.detach().to(torch.float32)
        dims = self._reduce_dims(v)
        lo, hi = (v.amin(dim=dims), v.amax(dim=dims)) if dims else (v, v)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        if self.histogram is not None:
            self.histogram.add(v, float(lo), float(hi))
        elif self.spec.observer != "minmax" and self.spec.axis is None:
            self._sample(v.flatten())
        self.batches += 1
        return x

    def _sample(self, flat: torch.Tensor) -> None:
        if flat.numel() > _SAMPLES_PER_BATCH:
            idx = torch.randint(0, flat.numel(), (_SAMPLES_PER_BATCH,), generator=self._gen)
            flat = flat[idx]
        self.samples.append(flat)
        if sum(s.numel() for s in self.samples) > _MAX_SAMPLES:
            merged = torch.cat(self.samples)
            keep = torch.randperm(merged.numel(), generator=self._gen)[: _MAX_SAMPLES // 2]
            self.samples = [merged[keep]]

    def qparams(self) -> QParams:
        if self.lo is None:
            raise RuntimeError("observer saw no data")
        return _ESTIMATORS[self.spec.observer](self)


def _minmax(obs: Observer) -> QParams:
    return qparams_from_range(obs.lo, obs.hi, obs.spec)


def _within_seen(obs: Observer, lo: float, hi: float) -> QParams:
    """The range [lo, hi] read off the histogram, never wider than the values seen: its bins overhang the
    extremes, and a quantile or a range end can fall inside the overhang."""
    return qparams_from_range(torch.clamp(torch.tensor(lo), min=float(obs.lo)), torch.clamp(torch.tensor(hi), max=float(obs.hi)), obs.spec)


def _histogram(obs: Observer) -> QParams:
    if obs.histogram is None:  # per-channel (weights): the full range of each channel
        return _minmax(obs)
    return _within_seen(obs, *obs.histogram.best_range(obs.spec.qmax - obs.spec.qmin + 1, obs.spec.symmetric))


def _percentile(obs: Observer) -> QParams:
    if obs.histogram is None:
        return _minmax(obs)
    p = obs.spec.percentile / 100.0
    return _within_seen(obs, obs.histogram.quantile(1.0 - p), obs.histogram.quantile(p))


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """x quantized with `qp` and dequantized again: the value the quantized model sees."""
    spec, axis = qp.spec, qp.spec.axis
    if qp.per_group:
        q = quantize_groups(x, qp.scale, qp.zero_point, spec.group_size, spec.qmin, spec.qmax, torch.int32)
        return dequantize_groups(q, qp.scale, qp.zero_point, spec.group_size)
    q = quantize_tensor(x, qp.scale, qp.zero_point, qp.spec.qmin, qp.spec.qmax, torch.int32, axis)
    return dequantize_tensor(q, qp.scale, qp.zero_point, axis)


def _fake_quant_error(x: torch.Tensor, qp: QParams, axis: int | None) -> torch.Tensor:
    err = (fake_quantize(x, qp) - x) ** 2
    if axis is None:
        return err.mean()
    dims = [d for d in range(x.dim()) if d != axis % x.dim()]
    return err.mean(dim=dims)


def _mse(obs: Observer) -> QParams:
    """Shrink the min-max range by the factor that minimises the quantization MSE."""
    if obs.spec.axis is None:
        x, axis = torch.cat(obs.samples), None
    else:
        raise ValueError("the mse observer is for activations; weights use minmax per channel")
    best, best_err = None, None
    for alpha in torch.linspace(0.3, 1.0, 36):
        qp = qparams_from_range(obs.lo * alpha, obs.hi * alpha, obs.spec)
        err = _fake_quant_error(x, qp, axis)
        if best_err is None or err < best_err:
            best, best_err = qp, err
    return best


def _entropy(obs: Observer) -> QParams:
    """TensorRT-style threshold: minimise KL(P || Q) between the value histogram and its quantized copy."""
    x = torch.cat(obs.samples) if obs.samples else torch.stack([obs.lo, obs.hi])
    amax = float(torch.maximum(-obs.lo, obs.hi))
    if amax == 0.0:
        return _minmax(obs)
    bins = 2048
    nonzero = x[x != 0]  # ReLU's exact zeros would swamp bin 0 and drag the threshold down
    hist = torch.histc((nonzero if nonzero.numel() else x).abs(), bins=bins, min=0.0, max=amax).double()
    levels = (obs.spec.qmax - obs.spec.qmin + 1) // (2 if obs.spec.symmetric or float(obs.lo) < 0 else 1)
    best_i, best_kl = bins, float("inf")
    for i in range(levels, bins + 1, 16):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()
        chunks = torch.tensor_split(hist[:i], levels)
        q = torch.cat([
            torch.where(c > 0, c.sum() / max(int((c > 0).sum()), 1), torch.zeros_like(c)) for c in chunks
        ])
        p, q = p / p.sum(), q / max(float(q.sum()), 1e-12)
        mask = p > 0
        kl = float((p[mask] * torch.log(p[mask] / q[mask].clamp(min=1e-12))).sum())
        if kl < best_kl:
            best_i, best_kl = i, kl
    threshold = amax * best_i / bins
    return qparams_from_range(torch.clamp(obs.lo, min=-threshold), torch.clamp(obs.hi, max=threshold), obs.spec)


# gptq rounds Linear weights in calibrate (quant/gptq.py); any other weight under that spec gets min-max ranges.
_ESTIMATORS = {"minmax": _minmax, "histogram": _histogram, "percentile": _percentile, "mse": _mse, "entropy": _entropy, "gptq": _minmax}


def weight_qparams(w: torch.Tensor, spec: QSpec) -> QParams:
    """Weights are static: observe them once, in full. Group-wise specs take each group's min/max."""
    if spec.group_size is not None:
        groups = weight_groups(w.detach().to(torch.float32), spec.group_size)
        return qparams_from_range(groups.amin(dim=-1), groups.amax(dim=-1), spec)
    obs = Observer(spec)
    obs(w)
    return obs.qparams()
