"""`linear_weight_only` on CUDA targets lowered to the GEMV kernel of cuda_gemv.py: weights packed at build
time (int4 by their storage bits, else int8 codes), group scales in float16, the activations cast to
float16 before the kernel (the cast fuses into the producer's kernel), a float32 result.

Static batches above cuda_gemv.MAX_ROWS rows keep the TE definition (ops.py) and its dlight schedule:
the GEMV re-reads the weights once per block of activation rows. A free batch takes the GEMV."""
from __future__ import annotations

import numpy as np
import torch
import tvm
from torch import fx
from tvm import relax, tirx

from ...ir import meta
from ...ir.rewrite import constant
from .cuda_gemv import MAX_ROWS, default_config, gemv_prim_func
from .cuda_weight_codes import CODES, Codes
from .layout import Layouts
from .ops import size_product
from .var_names import var_name

qc = torch.ops.qcompile


def codes_of(gm: fx.GraphModule, node: fx.Node) -> Codes | None:
    """The packed format of the node's weight, or None where the kernel cannot take it (K or the group
    size not whole 128-bit chunks, weight or scale not constant)."""
    x, w, scale, bias, group_size = node.args
    if w.op != "get_attr" or scale.op != "get_attr" or (bias is not None and bias.op != "get_attr"):
        return None
    codes = CODES.get(meta.storage_bits(w) or 8)
    k = constant(gm, w).shape[1]
    return codes if k % codes.chunk == 0 and group_size % codes.chunk == 0 else None


def _static_rows(gm: fx.GraphModule, x: fx.Node) -> int | None:
    """Rows of the activation where every input size is fixed, else None (the example's sizes say nothing)."""
    free = any(not isinstance(d, int) for p in gm.graph.find_nodes(op="placeholder") for d in (meta.input_dims(p) or ()))
    return None if free else int(np.prod(x.meta["val"].shape[:-1]))


def plan(gm: fx.GraphModule, target) -> dict[fx.Node, fx.Node]:
    """linear_weight_only nodes the GEMV computes on a CUDA `target` (each node is its own accumulator)."""
    if target is None or tvm.target.Target(target).kind.name != "cuda":
        return {}
    taken = {}
    for node in gm.graph.find_nodes(op="call_function", target=qc.linear_weight_only.default):
        rows = _static_rows(gm, node.args[0])
        if codes_of(gm, node) is not None and (rows is None or rows <= MAX_ROWS):
            taken[node] = node
    return taken


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, acc: fx.Node, layouts: Layouts, target,
         choose_tiling=None) -> relax.Expr:
    x_n, w_n, scale_n, bias_n, group_size = acc.args
    codes = codes_of(gm, acc)
    w = constant(gm, w_n).numpy()
    n, k = w.shape
    x = layouts.get(x_n, False)
    *outer, _ = x.ty.shape.values
    rows = x if len(outer) == 1 else bb.emit(relax.op.reshape(x, (size_product(outer), k)), var_name(acc))
    m = rows.ty.shape.values[0]
    halves = bb.emit(relax.op.astype(rows, "float16"), var_name(acc))
    name = f"gemv_{acc.name}"
    static_m = int(m) if isinstance(m, tirx.IntImm) else None
    func = gemv_prim_func(n, k, group_size, codes, default_config(static_m, n, k))
    gv = bb.add_func(func.with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name), name)
    bias = constant(gm, bias_n).float().numpy() if bias_n is not None else np.zeros(n, np.float32)
    consts = [
        relax.const(codes.pack(w), "uint32"),
        relax.const(constant(gm, scale_n).to(torch.float16).numpy(), "float16"),
        relax.const(bias, "float32"),
    ]
    out = bb.emit(relax.call_tir(gv, [halves, *consts], relax.TensorType((m, n), "float32")), var_name(result))
    return out if len(outer) == 1 else bb.emit(relax.op.reshape(out, (*outer, n)), var_name(result))
