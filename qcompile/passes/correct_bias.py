"""correct-bias: each quantized conv2d / linear's bias corrected by the mean output shift its weight
rounding causes on the calibration data (empirical bias correction, Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction", section 4.2).

Rounding the weights moves the mean of a layer's output by E[(W_q - W) x] per output channel; the error is
systematic, most for layers with few weights per channel (depthwise convs), and it accumulates through
depth. After calibrate has chosen the weight QParams, this pass runs the float graph over the calibration
batches once more, measures that mean for every layer from its float input (the shift as the layer sees
it, spatial positions and padding included), and subtracts it from the bias (creating one where the layer
had none). The weights and every range are left as they are, so the qparams stay valid.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from ..ir import meta
from ..ir.rewrite import Rewriter, constant
from ..quant.observers import fake_quantize
from ..quant.rules import rule_for
from .base import Pass, PassContext, PassResult, register_pass
from .calibrate import validate_calibration

aten = torch.ops.aten


# target -> (the layer applied to x with the weight error e in place of its weight and no bias, the
# output's channel axis)
_LAYERS = {
    aten.conv2d.default: (lambda n, x, e: F.conv2d(x, e, None, *n.args[3:7]), 1),
    aten.linear.default: (lambda n, x, e: F.linear(x, e), -1),
}


def _correctable(node: fx.Node) -> bool:
    rule = rule_for(node)
    if rule is None or node.target not in _LAYERS:
        return False
    weights = rule.weight_inputs(node)
    qp = meta.qparams(weights[0][0]) if len(weights) == 1 else None
    return qp is not None and qp.spec.group_size is None


class _ShiftMeter(fx.Interpreter):
    """Runs the float graph; for each layer, sums its weight-error output per channel and counts positions."""

    def __init__(self, gm: fx.GraphModule, errors: dict[fx.Node, torch.Tensor]):
        super().__init__(gm)
        self.errors = errors
        self.sums = {n: torch.zeros(e.shape[0], dtype=torch.float64) for n, e in errors.items()}
        self.counts = dict.fromkeys(errors, 0)

    def run_node(self, n: fx.Node):
        if n in self.errors:
            error_output, axis = _LAYERS[n.target]
            out = error_output(n, self.env[n.args[0]], self.errors[n]).to(torch.float64)
            axis = axis % out.dim()
            dims = [d for d in range(out.dim()) if d != axis]
            self.sums[n] += out.sum(dim=dims)
            self.counts[n] += out.numel() // out.shape[axis]
        return super().run_node(n)


@register_pass
@dataclass(frozen=True)
class CorrectBiasPass(Pass):
    name = "correct-bias"
    requires = frozenset({"qparams"})
    repeatable = False  # a second run would measure the same shift and subtract it again

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        layers = [n for n in gm.graph.nodes if n.op == "call_function" and _correctable(n)]
        if not layers or not ctx.calibration:
            return PassResult(gm, False)
        errors = {}
        for n in layers:
            w_node = n.args[1]
            w = constant(gm, w_node).detach().to(torch.float32)
            errors[n] = fake_quantize(w, meta.qparams(w_node)) - w
        meter = _ShiftMeter(gm, errors)
        with torch.no_grad():
            for batch in validate_calibration(ctx.calibration):
                meter.run(*batch)
        rw = Rewriter(gm, self.name)
        for n in layers:
            shift = (meter.sums[n] / max(meter.counts[n], 1)).to(torch.float32)
            bias_node = n.args[2] if len(n.args) > 2 else None
            bias = constant(gm, bias_node).detach() if isinstance(bias_node, fx.Node) else torch.zeros_like(shift)
            new_bias = rw.const(bias - shift, f"{n.name}_corrected_bias", n)
            n.args = (*n.args[:2], new_bias, *n.args[3:])
            ctx.count(self.name, "corrected layers")
        return PassResult(rw.finish(), True)
