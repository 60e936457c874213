"""User-facing quantization configuration, turned into QSpecs for activations and weights."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from .qspec import OBSERVERS, QSpec


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 8
    per_channel: bool = True  # weights: one scale per output channel
    symmetric_activations: bool = False  # asymmetric uint8 by default (VNNI wants u8 x s8)
    method: str = "minmax"  # activation observer (measured best on MobileNetV2; see README)
    percentile: float = 99.99
    weight_method: str = "minmax"

    def __post_init__(self) -> None:
        if self.bits not in (8, 4):
            raise UsageError(f"bits must be 8 or 4, got {self.bits!r}")
        for what, m in (("method", self.method), ("weight_method", self.weight_method)):
            if m not in OBSERVERS:
                raise UsageError(f"{what} must be one of {OBSERVERS}, got {m!r}")

    def activation_spec(self) -> QSpec:
        if self.symmetric_activations:
            return QSpec(dtype="int8", symmetric=True, observer=self.method, percentile=self.percentile)
        return QSpec(dtype="uint8", symmetric=False, observer=self.method, percentile=self.percentile)

    def weight_spec(self, axis: int | None) -> QSpec:
        dtype = "int8" if self.bits == 8 else "int4"
        return QSpec(
            dtype=dtype, symmetric=True, axis=axis if self.per_channel else None,
            observer=self.weight_method, narrow=True,
        )
