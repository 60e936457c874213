"""Quantization intent (QSpec) and its calibrated result (QParams): typed, frozen, validated."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError

# name -> (torch storage dtype, qmin, qmax). int4 values are stored one per int8 element in graphs
# (packed two per byte in artifacts and in the x86 GEMM's weights: meta.storage_bits marks those
# constants), so their storage dtype is int8.
DTYPES: dict[str, tuple[torch.dtype, int, int]] = {
    "uint8": (torch.uint8, 0, 255),
    "int8": (torch.int8, -128, 127),
    "uint4": (torch.uint8, 0, 15),
    "int4": (torch.int8, -8, 7),
}

OBSERVERS = ("minmax", "histogram", "percentile", "mse", "entropy")
WEIGHT_OBSERVERS = (*OBSERVERS, "gptq")  # gptq: Linear weights rounded against calibration inputs (quant/gptq.py)


@dataclass(frozen=True)
class QSpec:
    """How one tensor is to be quantized.

    `axis` is the per-channel axis (None: per-tensor). `narrow` drops the most negative code of signed
    types so that symmetric ranges are exactly symmetric ([-127, 127]), as weights conventionally are.
    `group_size` (with axis=0, for a 2-D [N, K] weight): one scale per `group_size` consecutive elements
    of each row, i.e. scale/zero_point of shape [N, K // group_size].
    """

    dtype: str = "uint8"
    symmetric: bool = False
    axis: int | None = None
    observer: str = "minmax"
    percentile: float = 99.99
    narrow: bool = False
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise UsageError(f"QSpec dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.observer not in WEIGHT_OBSERVERS:
            raise UsageError(f"QSpec observer must be one of {WEIGHT_OBSERVERS}, got {self.observer!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise UsageError(f"QSpec percentile must be in (50, 100], got {self.percentile}")
        if self.group_size is not None and (
            isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1 or self.axis != 0
        ):
            raise UsageError(f"QSpec group_size must be a positive int with axis=0 (rows of a [N, K] weight), "
                             f"got group_size={self.group_size!r}, axis={self.axis!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype][0]

    @property
    def qmin(self) -> int:
        lo = DTYPES[self.dtype][1]
        return lo + 1 if self.narrow and lo < 0 else lo

    @property
    def qmax(self) -> int:
        return DTYPES[self.dtype][2]

    @property
    def bits(self) -> int:
        return (self.qmax - DTYPES[self.dtype][1]).bit_length()

    def describe(self) -> str:
        gran = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        if self.group_size is not None:
            gran = f"per-group({self.group_size})"
        kind = "sym" if self.symmetric else "asym"
        return f"{self.dtype} {kind} {gran} {self.observer}"


@dataclass(frozen=True, eq=False)
class QParams:
    """Calibrated scale/zero point for a tensor quantized according to `spec`."""

    scale: torch.Tensor  # float32, 0-d (per-tensor), 1-d (per-channel) or [N, K // group_size] (per-group)
    zero_point: torch.Tensor  # int32, same shape as scale
    spec: QSpec

    def __post_init__(self) -> None:
        if self.scale.shape != self.zero_point.shape:
            raise ValueError("scale and zero_point must have the same shape")
        if not bool(torch.all(self.scale > 0)):
            raise ValueError("scales must be positive")

    @property
    def per_channel(self) -> bool:
        """One scale per channel or per group: anything but a single scale."""
        return self.spec.axis is not None

    @property
    def per_group(self) -> bool:
        return self.spec.group_size is not None

    def scalar(self) -> tuple[float, int]:
        """(scale, zero_point) of a per-tensor QParams as Python numbers."""
        if self.per_channel:
            raise ValueError("per-channel QParams have no single scale")
        return float(self.scale), int(self.zero_point)

    def same_as(self, other: "QParams") -> bool:
        return (
            self.spec.torch_dtype == other.spec.torch_dtype
            and self.scale.shape == other.scale.shape
            and bool(torch.equal(self.scale, other.scale))
            and bool(torch.equal(self.zero_point, other.zero_point))
        )

    def describe(self) -> str:
        if self.per_channel:
            s = self.scale
            gran = f"g{self.spec.group_size}" if self.per_group else f"ch{self.spec.axis}"
            return f"{self.spec.dtype} {gran} s=[{float(s.min()):.3g}..{float(s.max()):.3g}]"
        scale, zp = self.scalar()
        return f"{self.spec.dtype} s={scale:.4g} zp={zp}"
