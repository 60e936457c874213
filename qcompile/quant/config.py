"""User-facing quantization configuration, turned into QSpecs for activations and weights."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import UsageError
from ..ir.qspec import OBSERVERS, WEIGHT_OBSERVERS, QSpec

# static: activations calibrated ahead of time; dynamic: Linear inputs quantized per batch at run time;
# float: weight-only (only Linear weights are quantized).
ACTIVATIONS = ("static", "dynamic", "float")
# compile(bits=...) shorthands for weight-only Linear layers.
PRESETS = {"w4": {"bits": 4, "activations": "float", "group_size": 128}, "w8": {"bits": 8, "activations": "float"}}


FLOAT = "float"  # a layer width: weights (and the op) stay float
MIXED = "mixed"  # bits: the choose-bitwidth pass picks 8, 4 or float per layer under `budget`
LAYER_WIDTHS = (8, 4, FLOAT)  # what a layer's weights can be pinned to in `layer_bits`
FIRST_LAST_POLICIES = ("auto", "8", "float")
SENSITIVITY_METRICS = ("sqnr", "kl", "hessian")


def _pairs(layers, default_reason: str) -> tuple:
    """A mapping or list of names as sorted (name, value) pairs, so that the config stays hashable."""
    pairs = layers.items() if isinstance(layers, Mapping) else (
        (p, default_reason) if isinstance(p, str) else tuple(p) for p in layers
    )
    return tuple(sorted(pairs, key=lambda p: p[0]))


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _names(v) -> bool:  # layer names, or (name, value) pairs, or a mapping
    return isinstance(v, Mapping) or (isinstance(v, (list, tuple)) and all(isinstance(p, (str, list, tuple)) for p in v))


_FIELD_TYPES = (
    ("per_channel", lambda v: isinstance(v, bool), "True or False"),
    ("symmetric_activations", lambda v: isinstance(v, bool), "True or False"),
    ("percentile", lambda v: _real(v) and 50 < v <= 100, "a number in (50, 100]"),
    ("budget", lambda v: v is None or _real(v), "a number of bits or None"),
    ("budget_bytes", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0), "a positive int or None"),
    ("widths", lambda v: isinstance(v, (list, tuple)), f"a sequence of widths from {LAYER_WIDTHS}"),
    ("float_layers", _names, "layer names or a mapping of layer name to reason"),
    ("layer_bits", lambda v: isinstance(v, Mapping) or (isinstance(v, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in v)),
     "a mapping of layer name to width"),
    *((name, lambda v: isinstance(v, str), "a string") for name in ("method", "weight_method", "activations", "first_last", "sensitivity")),
)


@dataclass(frozen=True)
class QuantConfig:
    bits: int | str = 8  # 8, 4, or "mixed"
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
    # bits="mixed": the size budget, as average bits per quantizable weight (e.g. 6.0) or total weight bytes.
    budget: float | None = None
    budget_bytes: int | None = None
    # Widths the user fixes, by layer name (the report's `layer`, the op's name or its module path):
    # 8, 4 or "float". Honoured with any `bits`; with bits="mixed" the chooser allocates the rest.
    layer_bits: tuple[tuple[str, int | str], ...] | Mapping[str, int | str] = ()
    first_last: str = "auto"  # bits="mixed": "auto" (measured like the rest), "8" or "float" for both
    widths: tuple = LAYER_WIDTHS  # bits="mixed": the candidates; (8, 4) for integer-only hardware
    sensitivity: str = "sqnr"  # bits="mixed": how a layer's sensitivity is measured (see quant/sensitivity.py)

    def __post_init__(self) -> None:
        self._check_types()
        object.__setattr__(self, "float_layers", _pairs(self.float_layers, "kept float by QuantConfig.float_layers"))
        object.__setattr__(self, "layer_bits", _pairs(self.layer_bits, ""))
        self._validate_widths()
        for what, m, allowed in (("method", self.method, OBSERVERS), ("weight_method", self.weight_method, WEIGHT_OBSERVERS)):
            if m not in allowed:
                raise UsageError(f"{what} must be one of {allowed}, got {m!r}")
        self._check_weight_only()

    def _check_types(self) -> None:
        """Fields of the wrong type are UsageErrors here, not TypeErrors deep in a pass (found by fuzzing)."""
        for name, ok, want in _FIELD_TYPES:
            if not ok(getattr(self, name)):
                raise UsageError(f"QuantConfig.{name} must be {want}, got {getattr(self, name)!r}")

    def _check_weight_only(self) -> None:
        if self.activations not in ACTIVATIONS:
            raise UsageError(f"activations must be one of {ACTIVATIONS}, got {self.activations!r}")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise UsageError(f"group_size must be a positive int (e.g. 32, 64, 128) or None, got {g!r}")
        if g is not None and (self.activations != "float" or not self.per_channel):
            raise UsageError("group_size needs activations='float' (weight-only) and per_channel=True")

    @classmethod
    def from_bits(cls, bits: int | str, budget: float | None = None) -> "QuantConfig":
        """What compile(bits=..., budget=...) means: a width (8, 4), "mixed", or a preset of PRESETS ("w4", "w8")."""
        if isinstance(bits, str) and bits in PRESETS:
            return cls(**PRESETS[bits], budget=budget)
        return cls(bits=bits, budget=budget)

    def _validate_widths(self) -> None:
        if self.bits not in (8, 4, MIXED):
            raise UsageError(f"bits must be 8, 4 or {MIXED!r}, got {self.bits!r}")
        object.__setattr__(self, "widths", tuple(self.widths))
        if not self.widths or any(w not in LAYER_WIDTHS for w in self.widths):
            raise UsageError(f"widths must be a non-empty subset of {LAYER_WIDTHS}, got {self.widths!r}")
        for name, width in self.layer_bits:
            if width not in LAYER_WIDTHS:
                raise UsageError(f"layer_bits[{name!r}] must be one of {LAYER_WIDTHS}, got {width!r}")
        if self.bits == MIXED and (self.budget is None) == (self.budget_bytes is None):
            raise UsageError('bits="mixed" needs exactly one budget: budget=<average weight bits, e.g. 6> '
                             "or budget_bytes=<total weight bytes>")
        if self.budget is not None and not 0 < self.budget <= 32:
            raise UsageError(f"budget is average bits per weight, in (0, 32]; got {self.budget!r}")
        if self.first_last not in FIRST_LAST_POLICIES:
            raise UsageError(f"first_last must be one of {FIRST_LAST_POLICIES}, got {self.first_last!r}")
        if self.sensitivity not in SENSITIVITY_METRICS:
            raise UsageError(f"sensitivity must be one of {SENSITIVITY_METRICS}, got {self.sensitivity!r}")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: dict) -> "QuantConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})

    @property
    def default_weight_bits(self) -> int:
        """The width of a layer nobody chose for: 8 under "mixed" until the chooser decides."""
        return 8 if self.bits == MIXED else self.bits

    def pinned_width(self, *names: str) -> int | str | None:
        """The width layer_bits fixes for a layer known by any of `names`."""
        widths = dict(self.layer_bits)
        return next((widths[n] for n in names if n in widths), None)

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
        bits = self.default_weight_bits if bits is None else bits
        if bits not in (8, 4):
            raise UsageError(f"weight bits must be 8 or 4, got {bits!r}")
        axis = axis if self.per_channel else None
        return QSpec(
            dtype="int8" if bits == 8 else "int4", symmetric=True, axis=axis,
            observer=self.weight_method, narrow=True, group_size=self.group_size if axis == 0 else None,
        )
