"""fold-scales: float requantize scales become int32 multiplier + shift, zero points fold into biases,
and dequantize -> quantize pairs either cancel or become one explicit requantize."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from ..ir.rewrite import Rewriter, constant
from ..quant.math import (
    MULTIPLIER_BITS,
    fixed_point_multiplier,
    shared_shift_multipliers,
)
from ..quant.qdq import is_quantize, parse_dequantize, parse_quantize
from .base import Pass, PassContext, PassResult, register_pass

qc = torch.ops.qcompile


def _fold_qdq_pairs(rw: Rewriter, ctx: PassContext, name: str) -> bool:
    changed = False
    gm = rw.gm
    for q in [n for n in gm.graph.nodes if is_quantize(n)]:
        qq = parse_quantize(gm, q)
        dq = parse_dequantize(gm, qq.input) if qq is not None else None
        if dq is None or qq.qparams.per_channel or dq.qparams.per_channel:
            continue
        if dq.qparams.same_as(qq.qparams):
            q.replace_all_uses_with(dq.input)
            ctx.count(name, "cancelled q/dq pairs")
        else:
            (si, zi), (so, zo), spec = dq.qparams.scalar(), qq.qparams.scalar(), qq.qparams.spec
            scale = rw.const(torch.tensor([si / so], dtype=torch.float32), f"{q.name}_requant_scale", q)
            args = (dq.input, zi, scale, -1, zo, spec.qmin, spec.qmax, spec.torch_dtype)
            q.replace_all_uses_with(rw.call(qc.requantize.default, args, q, represents=q))
            ctx.count(name, "explicit requantize")
        changed = True
    return changed


def _fixed_requantize(rw: Rewriter, node: fx.Node) -> fx.Node:
    x, x_zp, scale, axis, out_zp, qmin, qmax, dtype = node.args
    mult, shift = shared_shift_multipliers(constant(rw.gm, scale))
    m = rw.const(mult, f"{node.name}_multiplier", node)
    s = rw.const(shift, f"{node.name}_shift", node)
    return rw.call(qc.requantize_fixed.default, (x, x_zp, m, s, axis, out_zp, qmin, qmax, dtype), node)


def _fixed_add(rw: Rewriter, node: fx.Node) -> fx.Node:
    a, sa, za, b, sb, zb, so, zo, qmin, qmax, dtype = node.args
    ra, rb = sa / so, sb / so
    _, shift = fixed_point_multiplier(max(ra, rb))
    shift = int(shift)
    ma, mb = round(ra * 2**shift), round(rb * 2**shift)
    if max(ma, mb) >= 2**MULTIPLIER_BITS:
        raise ValueError(f"add rescale {max(ra, rb):.4g} is too large for fixed point")
    return rw.call(qc.add_fixed.default, (a, za, ma, b, zb, mb, shift, zo, qmin, qmax, dtype), node)


def _fold_zero_point(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """acc = sum((x - zx) w) + b  ==  sum(x w) + (b - zx sum(w)): the correction is precomputed."""
    x, w, bias, x_zp, folded, *rest = node.args
    if folded or x_zp == 0:
        return None
    wt = constant(rw.gm, w).to(torch.int64)
    correction = x_zp * wt.reshape(wt.shape[0], -1).sum(dim=1)
    b = constant(rw.gm, bias).to(torch.int64) if bias is not None else torch.zeros_like(correction)
    new_b = b - correction
    if bool((new_b.abs() >= 2**31).any()):
        return None
    b_node = rw.const(new_b.to(torch.int32), f"{node.name}_bias_folded", node)
    return rw.call(node.target, (x, w, b_node, x_zp, True, *rest), node)


_FIXED_FORMS = {
    qc.requantize.default: _fixed_requantize,
    qc.add_q.default: _fixed_add,
    qc.conv2d_int.default: _fold_zero_point,
    qc.linear_int.default: _fold_zero_point,
}


@register_pass
@dataclass(frozen=True)
class FoldScalesPass(Pass):
    name = "fold-scales"
    requires = frozenset({"integer-ops"})

    def run(self, gm: fx.GraphModule, ctx: PassContext) -> PassResult:
        rw = Rewriter(gm, self.name)
        changed = _fold_qdq_pairs(rw, ctx, self.name)
        for node in list(gm.graph.nodes):
            fn = _FIXED_FORMS.get(node.target) if node.op == "call_function" else None
            new = fn(rw, node) if fn else None
            if new is None:
                continue
            new.meta.update({k: v for k, v in node.meta.items() if k not in new.meta})
            node.replace_all_uses_with(new)
            ctx.count(self.name, str(node.target).split(".")[1])
            changed = True
        return PassResult(rw.finish() if changed else gm, changed)
