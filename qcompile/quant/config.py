"""User-facing quantization configuration, turned into QSpecs for activations and weights."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import UsageError
from .qspec import OBSERVERS, WEIGHT_OBSERVERS, QSpec

# static: activations calibrated ahead of time; dynamic: Linear inputs quantized per batch at run time;
# float: weight-only (only Linear weights are quantized).
ACTIVATIONS = ("static", "dynamic", "float")
# compile(bits=...) shorthands for weight-only Linear layers.
PRESETS = {"w4": {"bits": 4, "activations": "float", "group_size": 128}, "w8": {"bits": 8, "activations": "float"}}


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
    activations: str = "static"  # one of ACTIVATIONS
    group_size: int | None = None  # weights: one scale per group_size consecutive inputs of a row (None: per channel)

    def __post_init__(self) -> None:
        layers = self.float_layers
        pairs = layers.items() if isinstance(layers, Mapping) else (
            (p, "kept float by QuantConfig.float_layers") if isinstance(p, str) else tuple(p) for p in layers
        )
        object.__setattr__(self, "float_layers", tuple(sorted(pairs)))
        if self.bits not in (8, 4):
            raise UsageError(f"bits must be 8 or 4, got {self.bits!r}")
        for what, m, allowed in (("method", self.method, OBSERVERS), ("weight_method", self.weight_method, WEIGHT_OBSERVERS)):
            if m not in allowed:
                raise UsageError(f"{what} must be one of {allowed}, got {m!r}")
        self._check_weight_only()

    def _check_weight_only(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise UsageError(f"activations must be one of {ACTIVATIONS}, got {self.activations!r}")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise UsageError(f"group_size must be a positive int (e.g. 32, 64, 128) or None, got {g!r}")
        if g is not None and (self.activations != "float" or not self.per_channel):
            raise UsageError("group_size needs activations='float' (weight-only) and per_channel=True")

    @classmethod
    def from_bits(cls, bits: int | str) -> "QuantConfig":
        """What compile(bits=...) means: a width (8, 4) or a preset name of PRESETS ("w4", "w8")."""
        return cls(**PRESETS[bits]) if isinstance(bits, str) and bits in PRESETS else cls(bits=bits)

    def float_reason(self, layer: str) -> str | None:
        return dict(self.float_layers).get(layer)

    def with_float_layers(self, reasons: Mapping[str, str]) -> "QuantConfig":
        return dataclasses.replace(self, float_layers={**dict(self.float_layers), **reasons})

    def activation_spec(self) -> QSpec:
        if self.symmetric_activations:
            return QSpec(dtype="int8", symmetric=True, observer=self.method, percentile=self.percentile)
        return QSpec(dtype="uint8", symmetric=False, observer=self.method, percentile=self.percentile)

    def weight_spec(self, axis: int | None, bits: int | None = None) -> QSpec:
        """The weights' QSpec at the config's width, or at `bits` (a per-layer choice) when given."""
        bits = self.bits if bits is None else bits
        if bits not in (8, 4):
            raise UsageError(f"weight bits must be 8 or 4, got {bits!r}")
        axis = axis if self.per_channel else None
        return QSpec(
            dtype="int8" if bits == 8 else "int4", symmetric=True, axis=axis,
            observer=self.weight_method, narrow=True, group_size=self.group_size if axis == 0 else None,
        )
