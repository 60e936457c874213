"""The reference backend: the integer graph executed by PyTorch, op by op, with the semantics in
qcompile/quant/ops.py. It is the bit-exact oracle for every compiled backend."""
from __future__ import annotations

from torch import fx

from .base import register_backend


@register_backend("reference")
class ReferenceBackend:
    name = "reference"
    supports_dynamic_shapes = True

    def build(self, gm: fx.GraphModule):
        return gm
