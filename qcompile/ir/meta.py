"""The one module that owns qcompile's node metadata keys.

Passes read and write quantization intent, calibrated parameters, provenance and explanations only
through these helpers, so that the meaning of every key lives here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import fx

from .qspec import QParams, QSpec

_QSPEC = "qc_qspec"  # QSpec: this node's output is to be quantized (own observer)
_SHARE = "qc_share"  # str: this node's output reuses the qparams of the named node (pass-through ops)
_QPARAMS = "qc_qparams"  # QParams: calibrated parameters of this node's output
_FUSED = "qc_fused_into"  # str: this node is fused with the named activation that follows it
_FLOAT = "qc_float_reason"  # str: why this op stays in float
_SOURCE = "qc_source"  # Source: where in the user's code this node comes from
_ORIGIN = "qc_origin"  # str: name of the float-graph node whose value this node represents
_CREATED = "qc_created_by"  # str: the pass that created this node
_LAYER = "qc_layer"  # LayerInfo: what the report shows for an integer layer
_DYNAMIC = "qc_dynamic_inputs"  # True: this op's activation inputs are quantized at run time (no calibration)
_INPUT_DIMS = "qc_input_dims"  # tuple[int | FreeDim]: a placeholder's shape as torch.export declared it
_WEIGHT_BITS = "qc_weight_bits"  # 8 | 4 | "float": the width choose-bitwidth picked for this op's weights
_STORAGE_BITS = "qc_storage_bits"  # int: bits per value of a get_attr constant (held one per element in the graph)


@dataclass(frozen=True)
class Source:
    module_path: str  # e.g. "features.3.conv.1.0"
    module_type: str  # e.g. "Conv2d"
    location: str  # "file.py:71"
    code: str  # the source line

    def short(self) -> str:
        mod = f"{self.module_path} ({self.module_type})" if self.module_path else self.module_type
        return f"{mod} @ {self.location}" if self.location else mod


@dataclass(frozen=True)
class LayerInfo:
    """What an integer layer computes, for reports: op kind, weight bits, stored weight bytes."""

    kind: str
    bits: int
    weight_bytes: int


@dataclass(frozen=True)
class FreeDim:
    """A dimension torch.export left symbolic: its size as a sympy expression of the export's symbols
    (e.g. s27 or 2*s17) and the range the user declared for it."""

    expr: object  # sympy.Expr
    min: int
    max: int | None  # None: unbounded


def input_dims(node: fx.Node) -> tuple | None:
    """The placeholder's shape as captured (ints and FreeDims); later shape propagation only sees the
    example's sizes."""
    return node.meta.get(_INPUT_DIMS)


def set_input_dims(node: fx.Node, dims: tuple) -> None:
    node.meta[_INPUT_DIMS] = tuple(dims)


def storage_bits(node: fx.Node) -> int | None:
    """The bit width a constant's values fit (e.g. 4 for int4 weights, which the graph holds one per int8
    element): artifacts store it packed at that width and backends may load it packed. None: the
    element dtype's full width."""
    return node.meta.get(_STORAGE_BITS)


def set_storage_bits(node: fx.Node, bits: int) -> None:
    if node.op != "get_attr":
        raise ValueError(f"storage bits describe constants; %{node.name} is a {node.op} node")
    node.meta[_STORAGE_BITS] = int(bits)


def qspec(node: fx.Node) -> QSpec | None:
    return node.meta.get(_QSPEC)


def set_qspec(node: fx.Node, spec: QSpec | None) -> None:
    if spec is None:
        node.meta.pop(_QSPEC, None)
    else:
        node.meta[_QSPEC] = spec


def weight_bits(node: fx.Node) -> int | str | None:
    return node.meta.get(_WEIGHT_BITS)


def set_weight_bits(node: fx.Node, bits: int | str) -> None:
    node.meta[_WEIGHT_BITS] = bits


def share_source(node: fx.Node) -> str | None:
    return node.meta.get(_SHARE)


def set_share(node: fx.Node, root: fx.Node) -> None:
    node.meta[_SHARE] = root.name


def qparams(node: fx.Node) -> QParams | None:
    return node.meta.get(_QPARAMS)


def set_qparams(node: fx.Node, qp: QParams) -> None:
    node.meta[_QPARAMS] = qp


def dynamic_inputs(node: fx.Node) -> bool:
    return bool(node.meta.get(_DYNAMIC, False))


def set_dynamic_inputs(node: fx.Node) -> None:
    node.meta[_DYNAMIC] = True


def is_annotated(node: fx.Node) -> bool:
    return _QSPEC in node.meta or _SHARE in node.meta


def fused_into(node: fx.Node) -> str | None:
    return node.meta.get(_FUSED)


def set_fused_into(node: fx.Node, activation: fx.Node) -> None:
    node.meta[_FUSED] = activation.name


def float_reason(node: fx.Node) -> str | None:
    return node.meta.get(_FLOAT)


def set_float_reason(node: fx.Node, reason: str) -> None:
    node.meta[_FLOAT] = reason


def source(node: fx.Node) -> Source | None:
    return node.meta.get(_SOURCE)


def origin(node: fx.Node) -> str | None:
    return node.meta.get(_ORIGIN)


def created_by(node: fx.Node) -> str | None:
    return node.meta.get(_CREATED)


def layer(node: fx.Node) -> LayerInfo | None:
    return node.meta.get(_LAYER)


def set_layer(node: fx.Node, info: LayerInfo) -> None:
    node.meta[_LAYER] = info


def inherit(new: fx.Node, old: fx.Node, pass_name: str, represents: fx.Node | None = None) -> None:
    """Give a node created by a rewrite the provenance of the node it replaces."""
    if _SOURCE in old.meta:
        new.meta[_SOURCE] = old.meta[_SOURCE]
    target = represents if represents is not None else old
    new.meta[_ORIGIN] = origin(target) or target.name
    new.meta[_CREATED] = pass_name


def clear_quant_annotations(node: fx.Node) -> None:
    for key in (_QSPEC, _SHARE, _FUSED, _DYNAMIC):
        node.meta.pop(key, None)


_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in \S+\n\s*(?P<code>[^\n]*)')


def _user_frame(stack_trace: str) -> tuple[str, str]:
    """The innermost frame outside torch itself: the user's line that produced the op."""
    frames = [m for m in _FRAME.finditer(stack_trace or "") if "/torch/" not in m["file"]]
    if not frames:
        return "", ""
    m = frames[-1]
    return f"{m['file'].rsplit('/', 1)[-1]}:{m['line']}", m["code"].strip()


def record_source(node: fx.Node) -> None:
    """Derive a Source from torch.export's nn_module_stack and stack_trace metadata."""
    stack = node.meta.get("nn_module_stack") or {}
    path, typ = "", ""
    if stack:
        path, typ = list(stack.values())[-1]
        typ = typ.rsplit(".", 1)[-1] if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    location, code = _user_frame(node.meta.get("stack_trace", ""))
    if path or location:
        node.meta[_SOURCE] = Source(path, typ, location, code)
