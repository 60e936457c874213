"""How Relax variables are named after the fx nodes they compute.

The profile matches every fused kernel call to the named bindings it replaced, and so to the fx
nodes it computes (profile.call_sites). A name is
`<fx node>:` plus whatever digits TVM appends to keep names unique; fx names never contain a colon.
"""
from __future__ import annotations

from torch import fx


def var_name(node: fx.Node) -> str:
    return f"{node.name}:"


def node_of_var(name: str) -> str | None:
    """The fx node name inside a name made by var_name (None for TVM's own names such as `lv3`)."""
    return name.split(":")[0] if ":" in name else None
