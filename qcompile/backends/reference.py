"""The reference backend: the integer graph executed by PyTorch, op by op, with the semantics in
qcompile/quant/ops.py. It is the bit-exact oracle for every compiled backend."""
from __future__ import annotations

from torch import fx

from .base import Backend, Capability, register_backend


@register_backend("reference")
class ReferenceBackend(Backend):
    name = "reference"
    capabilities = frozenset({Capability.DYNAMIC_SHAPES})

    def build(self, gm: fx.GraphModule):
        return gm

