"""Numeric debugger: per-node SQNR of a quantized graph against the float graph it came from."""
from __future__ import annotations

import math

import torch
from torch import fx

from .ir import meta
from .quant.math import dequantize_tensor


class _Capture(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, keep: set[str] | None = None):
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}
        self.keep = keep

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and (self.keep is None or n.name in self.keep):
            self.values[n.name] = out
        return out


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    ref = reference.detach().to(torch.float64)
    noise = ((ref - approx.detach().to(torch.float64)) ** 2).sum().item()
    signal = (ref**2).sum().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def node_values(gm: fx.GraphModule, inputs: tuple, keep: set[str] | None = None) -> dict[str, torch.Tensor]:
    interp = _Capture(gm, keep)
    with torch.no_grad():
        interp.run(*inputs)
    return interp.values


def as_float(node: fx.Node, value: torch.Tensor) -> torch.Tensor:
    """The real value an integer tensor stands for (dequantized with its node's qparams)."""
    if value.is_floating_point():
        return value
    qp = meta.qparams(node)
    if qp is None:
        raise ValueError(f"%{node.name} holds integers but has no qparams")
    return dequantize_tensor(value, qp.scale, qp.zero_point, qp.spec.axis)


def per_node_sqnr(float_gm: fx.GraphModule, quant_gm: fx.GraphModule, inputs: tuple) -> dict[str, float]:
    """SQNR (dB) of every quantized-graph node that represents a float-graph node, keyed by node name."""
    pairs = {
        n.name: meta.origin(n) or n.name for n in quant_gm.graph.nodes
        if n.op == "call_function" and (
            (meta.origin(n) is not None and (meta.qparams(n) is not None or meta.layer(n) is not None))
            or meta.float_reason(n) is not None
        )
    }
    fvals = node_values(float_gm, inputs, set(pairs.values()))
    qvals = node_values(quant_gm, inputs, set(pairs))
    nodes = {n.name: n for n in quant_gm.graph.nodes}
    out = {}
    for name, orig in pairs.items():
        if name in qvals and orig in fvals and qvals[name].shape == fvals[orig].shape and fvals[orig].is_floating_point():
            out[name] = sqnr_db(fvals[orig], as_float(nodes[name], qvals[name]))
    return out
