"""A value histogram that does not depend on how the data was batched, its quantiles, and the range that
minimises the expected L2 quantization error over it (what PyTorch's HistogramObserver searches for).

Bins are [i * w, (i + 1) * w) with w a power of two, the smallest for which the range seen so far fits in
BINS bins. When a batch widens the range, w doubles as often as needed and neighbouring bins merge; since
the edges are multiples of w (x / w is exact for a power of two), merged counts equal the counts binned
at the wider w directly. The final histogram is thus a function of the values alone: any batching or
order of the calibration data gives the same counts, the same range and the same scale.
"""
from __future__ import annotations

import math

import torch

BINS = 2048
_CANDIDATES = 512  # range ends tried per side by the search


class Histogram:
    def __init__(self):
        self.width: float | None = None
        self.first = 0  # index of counts[0]: the bin [first * width, (first + 1) * width)
        self.counts = torch.zeros(0, dtype=torch.float64)

    def add(self, values: torch.Tensor, lo: float, hi: float) -> None:
        """Count `values`, whose minimum and maximum (the observer has them already) are lo and hi."""
        flat = values.detach().reshape(-1).to(torch.float32)
        if flat.numel() == 0:
            return
        seen_lo, seen_hi = (min(lo, self.edges()[0]), max(hi, self.edges()[1])) if len(self.counts) else (lo, hi)
        self._widen(_width_for(seen_lo, seen_hi))
        index = torch.floor(flat / self.width).to(torch.int64)
        # The bins of this batch's extremes (exact: the width is a power of two), and the bins kept so far.
        first, last = math.floor(lo / self.width), math.floor(hi / self.width)
        if len(self.counts):
            first, last = min(first, self.first), max(last, self.first + len(self.counts) - 1)
        counts = torch.zeros(last + 1 - first, dtype=torch.float64)
        counts[self.first - first: self.first - first + len(self.counts)] += self.counts
        counts += torch.bincount(index - first, minlength=len(counts)).to(torch.float64)
        self.first, self.counts = first, counts

    def _widen(self, width: float) -> None:
        if self.width is None or not len(self.counts):
            self.width = width if self.width is None else max(self.width, width)
            return
        factor = round(width / self.width)
        if factor <= 1:
            return
        old = torch.arange(self.first, self.first + len(self.counts))
        new = torch.div(old, factor, rounding_mode="floor")  # aligned: floor(i * w / (factor * w))
        merged = torch.zeros(int(new[-1] - new[0]) + 1, dtype=torch.float64)
        merged.index_add_(0, new - new[0], self.counts)
        self.width, self.first, self.counts = width, int(new[0]), merged

    def edges(self) -> tuple[float, float]:
        return self.first * self.width, (self.first + len(self.counts)) * self.width

    def quantile(self, q: float) -> float:
        """The value below which a fraction q of the counts lies, interpolated linearly within its bin."""
        cum = torch.cumsum(self.counts, 0)
        target = q * float(cum[-1])
        i = min(int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64))), len(cum) - 1)
        before = float(cum[i - 1]) if i else 0.0
        inside = (target - before) / float(self.counts[i]) if self.counts[i] > 0 else 0.0
        return (self.first + i + min(max(inside, 0.0), 1.0)) * self.width

    def best_range(self, levels: int, symmetric: bool) -> tuple[float, float]:
        """[lo, hi] (containing 0, as every qcompile range does) whose `levels`-step uniform grid gives the
        least expected squared error over the histogram: rounding error delta^2 / 12 for the values
        inside, the distance to the nearest end for the values clipped."""
        counts = self.counts
        centres = (torch.arange(len(counts), dtype=torch.float64) + self.first + 0.5) * self.width
        lo_edge, hi_edge = min(self.edges()[0], 0.0), max(self.edges()[1], 0.0)
        if symmetric:
            amax = max(-lo_edge, hi_edge)
            ends = torch.linspace(amax / _CANDIDATES, amax, _CANDIDATES, dtype=torch.float64)
            err = _expected_error(counts, centres, -ends, ends, levels)
            best = ends[int(torch.argmin(err))]
            return -float(best), float(best)
        los = torch.linspace(lo_edge, 0.0, _CANDIDATES, dtype=torch.float64) if lo_edge < 0 else torch.zeros(1, dtype=torch.float64)
        his = torch.linspace(0.0, hi_edge, _CANDIDATES, dtype=torch.float64)[1:] if hi_edge > 0 else torch.zeros(1, dtype=torch.float64)
        a, b = torch.meshgrid(los, his, indexing="ij")
        a, b = a.reshape(-1).contiguous(), b.reshape(-1).contiguous()
        err = _expected_error(counts, centres, a, b, levels)
        i = int(torch.argmin(err))
        return float(a[i]), float(b[i])


def _width_for(lo: float, hi: float) -> float:
    span = hi - lo
    if not span > 0:
        span = max(abs(lo), abs(hi), 1e-30)
    return 2.0 ** math.ceil(math.log2(span / BINS))


def _expected_error(counts, centres, lo, hi, levels: int) -> torch.Tensor:
    """Expected squared error for each candidate range [lo[j], hi[j]], from prefix sums of the counts'
    zeroth, first and second moments (each candidate costs O(1) after the sort)."""
    s0 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(counts, 0)])
    s1 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(counts * centres, 0)])
    s2 = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(counts * centres * centres, 0)])
    below = torch.searchsorted(centres, lo)  # bins [0, below) are clipped up to lo
    above = torch.searchsorted(centres, hi, right=True)  # bins [above, n) are clipped down to hi
    n = len(counts)
    clip_lo = s2[below] - 2 * lo * s1[below] + lo * lo * s0[below]
    clip_hi = (s2[n] - s2[above]) - 2 * hi * (s1[n] - s1[above]) + hi * hi * (s0[n] - s0[above])
    delta = (hi - lo) / (levels - 1)
    inside = s0[above] - s0[below]
    return clip_lo + clip_hi + inside * delta * delta / 12
