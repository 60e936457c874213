"""User-facing quantization configuration, turned into QSpecs for activations and weights."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    # Layers kept in float, by the name the report's `layer` column shows: a list of names, or a mapping
    # name -> the reason the report gives. Stored as sorted (name, reason) pairs so the config stays hashable.
    float_layers: tuple[tuple[str, str], ...] | Mapping[str, str] | tuple[str, ...] = ()

    def __post_init__(self) -> None:
        layers = self.float_layers
        pairs = layers.items() if isinstance(layers, Mapping) else (
            (p, "kept float by QuantConfig.float_layers") if isinstance(p, str) else tuple(p) for p in layers
        )
        object.__setattr__(self, "float_layers", tuple(sorted(pairs)))
        if self.bits not in (8, 4):
            raise UsageError(f"bits must be 8 or 4, got {self.bits!r}")
        for what, m in (("method", self.method), ("weight_method", self.weight_method)):
            if m not in OBSERVERS:
                raise UsageError(f"{what} must be one of {OBSERVERS}, got {m!r}")

    def float_reason(self, layer: str) -> str | None:
        return dict(self.float_layers).get(layer)

    def with_float_layers(self, reasons: Mapping[str, str]) -> "QuantConfig":
        return dataclasses.replace(self, float_layers={**dict(self.float_layers), **reasons})

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
