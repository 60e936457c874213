"""Structural checks run after passes (verify-each): fx lint plus qcompile's metadata invariants."""
from __future__ import annotations

import torch
from torch import fx

from . import meta


class VerificationError(RuntimeError):
    pass


def _check_storage_bits(node: fx.Node, value) -> None:
    """A constant marked as b-bit must hold b-bit values of its dtype's signedness: artifacts and kernels
    pack it at that width."""
    bits = meta.storage_bits(node)
    if bits is None or not isinstance(value, torch.Tensor) or value.numel() == 0:
        return
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if value.dtype.is_signed else (0, (1 << bits) - 1)
    if value.dtype.is_floating_point or int(value.min()) < lo or int(value.max()) > hi:
        raise VerificationError(f"%{node.name} is marked {bits}-bit ([{lo}, {hi}]) but holds {value.dtype} "
                                f"values in [{value.min().item()}, {value.max().item()}]")


def verify(gm: fx.GraphModule) -> None:
    try:
        gm.graph.lint()
    except Exception as exc:
        raise VerificationError(f"graph is malformed: {exc}") from exc
    names = {n.name for n in gm.graph.nodes}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            obj = gm
            for part in node.target.split("."):
                if not hasattr(obj, part):
                    raise VerificationError(f"%{node.name} reads missing attribute {node.target!r}")
                obj = getattr(obj, part)
            _check_storage_bits(node, obj)
        share = meta.share_source(node)
        if share is not None and share not in names:
            raise VerificationError(f"%{node.name} shares qparams with %{share}, which is not in the graph")
        spec, qp = meta.qspec(node), meta.qparams(node)
        if spec is not None and qp is not None and qp.spec.dtype != spec.dtype:
            raise VerificationError(f"%{node.name}: qparams dtype {qp.spec.dtype} differs from its qspec {spec.dtype}")
