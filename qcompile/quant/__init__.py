"""Quantization: QSpec semantics, observers, fixed-point math, integer reference ops, op rules and lowerings."""
from . import ops  # noqa: F401  (registers torch.ops.qcompile before any module refers to its ops)
