"""Build and recognise quantize/dequantize nodes: qcompile's own and PyTorch's `quantized_decomposed`.

Recognising `quantized_decomposed` is what lets a model prepared and converted with torchao's PT2E flow
(prepare_pt2e/convert_pt2e) compile: fuse-qdq sees the same (input, QParams) either way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx

from ..ir import meta, shapes
from ..ir.qspec import DTYPES, QParams, QSpec
from ..ir.rewrite import Rewriter, constant
from . import ops  # noqa: F401  (registers torch.ops.qcompile)

qc = torch.ops.qcompile


@dataclass(frozen=True)
class QDQ:
    input: fx.Node
    qparams: QParams


def spec_for(dtype: torch.dtype, qmin: int, qmax: int, axis: int | None, group_size: int | None = None) -> QSpec:
    for name, (tdtype, lo, hi) in DTYPES.items():
        if tdtype == dtype and lo <= qmin and qmax == hi:
            return QSpec(dtype=name, symmetric=False, axis=axis, narrow=qmin == lo + 1, group_size=group_size)
    raise ValueError(f"unsupported quantized range {dtype} [{qmin}, {qmax}]")


def _value(gm: fx.GraphModule, a) -> torch.Tensor:
    if isinstance(a, fx.Node):
        return constant(gm, a) if a.op == "get_attr" else None
    return torch.tensor(a)


def _parse(gm, node, scale, zp, axis, qmin, qmax, dtype, group_size=None) -> QDQ | None:
    scale, zp = _value(gm, scale), _value(gm, zp)
    if scale is None or zp is None:
        return None
    spec = spec_for(dtype, qmin, qmax, axis, group_size)
    if group_size is not None:
        scale = scale.to(torch.float32)  # [N, K // group_size]
    else:
        scale = scale.to(torch.float32).reshape(-1) if axis is not None else scale.to(torch.float32).reshape(())
    zp = zp.to(torch.int32).reshape(scale.shape)
    return QDQ(node.args[0], QParams(scale, zp, spec))


_QUANTIZE: dict[object, Callable] = {}
_DEQUANTIZE: dict[object, Callable] = {}


def _register_formats() -> None:
    t = lambda gm, n, a: _parse(gm, n, a[1], a[2], None, a[3], a[4], a[5])  # noqa: E731
    c = lambda gm, n, a: _parse(gm, n, a[1], a[2], a[3], a[4], a[5], a[6])  # noqa: E731
    _QUANTIZE[qc.quantize_per_tensor.default] = t
    _QUANTIZE[qc.quantize_per_channel.default] = c
    _QUANTIZE[qc.quantize_per_group.default] = lambda gm, n, a: _parse(gm, n, a[1], a[2], 0, a[4], a[5], a[6], a[3])
    # qcompile's dequantize carries no range: it is that of its producer.
    _DEQUANTIZE[qc.dequantize_per_tensor.default] = lambda gm, n, a: _dq_from_producer(gm, n, a, None)
    _DEQUANTIZE[qc.dequantize_per_channel.default] = lambda gm, n, a: _dq_from_producer(gm, n, a, a[3])
    _DEQUANTIZE[qc.dequantize_per_group.default] = lambda gm, n, a: _dq_from_producer(gm, n, a, 0, a[3])
    qd = _quantized_decomposed()
    if qd is None:
        return
    for ov in (qd.quantize_per_tensor.default, qd.quantize_per_tensor.tensor):
        _QUANTIZE[ov] = t
    for ov in (qd.dequantize_per_tensor.default, qd.dequantize_per_tensor.tensor):
        _DEQUANTIZE[ov] = t
    _QUANTIZE[qd.quantize_per_channel.default] = c
    _DEQUANTIZE[qd.dequantize_per_channel.default] = c


def _quantized_decomposed():
    """PyTorch's quantized_decomposed op namespace (registered on import of its defining module)."""
    try:
        from torch.ao.quantization.fx import _decomposed  # noqa: F401
    except ImportError:  # pragma: no cover - very old or stripped torch
        return None
    return torch.ops.quantized_decomposed


def _dq_from_producer(gm, node, a, axis, group_size=None) -> QDQ | None:
    qmin, qmax, dtype = _storage_range(a[0])
    return _parse(gm, node, a[1], a[2], axis, qmin, qmax, dtype, group_size)


def _storage_range(src: fx.Node) -> tuple[int, int, torch.dtype]:
    """The integer range of a dequantize's input: from its quantize node, its qparams, or its dtype."""
    q = parse_quantize(src.graph.owning_module, src) if src.op == "call_function" else None
    qp = q.qparams if q is not None else meta.qparams(src) if src.op == "call_function" else None
    if qp is not None:
        return qp.spec.qmin, qp.spec.qmax, qp.spec.torch_dtype
    dtype = shapes.dtype(src)
    for name in ("uint8", "int8"):
        tdtype, lo, hi = DTYPES[name]
        if tdtype == dtype:
            return lo, hi, dtype
    raise ValueError(f"cannot tell the integer range of %{src.name} (dtype {dtype})")


def parse_quantize(gm: fx.GraphModule, node: fx.Node) -> QDQ | None:
    fn = _QUANTIZE.get(node.target) if node.op == "call_function" else None
    return fn(gm, node, node.args) if fn else None


def parse_dequantize(gm: fx.GraphModule, node: fx.Node) -> QDQ | None:
    fn = _DEQUANTIZE.get(node.target) if node.op == "call_function" else None
    return fn(gm, node, node.args) if fn else None


def is_quantize(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _QUANTIZE


def is_dequantize(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _DEQUANTIZE


def is_dynamic_quantize(node: fx.Node) -> bool:
    """A fake-quantize whose qparams are computed from its input at run time (ops.fake_quantize_dynamic)."""
    return node.op == "call_function" and node.target == qc.fake_quantize_dynamic.default


def activation_source(gm: fx.GraphModule, node: fx.Node) -> tuple[str, fx.Node, QParams | None]:
    """How an op's activation input arrives, named as QuantConfig.activations names it: "static"
    (dequantize of an integer tensor with calibrated qparams), "dynamic" (quantized at run time) or "float"."""
    if (dq := parse_dequantize(gm, node)) is not None:
        return "static", dq.input, dq.qparams
    if is_dynamic_quantize(node):
        return "dynamic", node.args[0], None
    return "float", node, None


def insert_dynamic_quantize(rw: Rewriter, x: fx.Node, anchor: fx.Node) -> fx.Node:
    return rw.call(qc.fake_quantize_dynamic.default, (x,), anchor, like=x)


def _qparams_consts(rw: Rewriter, x: fx.Node, qp: QParams, anchor: fx.Node) -> tuple[fx.Node, fx.Node]:
    return rw.const(qp.scale, f"{x.name}_scale", anchor), rw.const(qp.zero_point, f"{x.name}_zero_point", anchor)


def insert_quantize(rw: Rewriter, x: fx.Node, qp: QParams, anchor: fx.Node) -> fx.Node:
    """quantize(x) placed before `anchor`, carrying x's provenance."""
    s = qp.spec
    if qp.per_group:
        scale, zp = _qparams_consts(rw, x, qp, anchor)
        args = (x, scale, zp, s.group_size, s.qmin, s.qmax, s.torch_dtype)
        return rw.call(qc.quantize_per_group.default, args, anchor, like=x)
    if qp.per_channel:
        scale = rw.const(qp.scale, f"{x.name}_scale", anchor)
        zp = rw.const(qp.zero_point, f"{x.name}_zero_point", anchor)
        return rw.call(qc.quantize_per_channel.default, (x, scale, zp, s.axis, s.qmin, s.qmax, s.torch_dtype), anchor, like=x)
    scale, zpv = qp.scalar()
    return rw.call(qc.quantize_per_tensor.default, (x, scale, zpv, s.qmin, s.qmax, s.torch_dtype), anchor, like=x)


def insert_dequantize(rw: Rewriter, q: fx.Node, qp: QParams, anchor: fx.Node) -> fx.Node:
    if qp.per_group:
        scale, zp = _qparams_consts(rw, q, qp, anchor)
        return rw.call(qc.dequantize_per_group.default, (q, scale, zp, qp.spec.group_size), anchor, like=q)
    if qp.per_channel:
        scale = rw.const(qp.scale, f"{q.name}_scale", anchor)
        zp = rw.const(qp.zero_point, f"{q.name}_zero_point", anchor)
        return rw.call(qc.dequantize_per_channel.default, (q, scale, zp, qp.spec.axis), anchor, like=q)
    scale, zpv = qp.scalar()
    return rw.call(qc.dequantize_per_tensor.default, (q, scale, zpv), anchor, like=q)


_register_formats()
