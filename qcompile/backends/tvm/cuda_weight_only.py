"""`linear_weight_only` on CUDA targets, with the activations cast to float16 before the kernel (the cast
fuses into the producer's kernel), group scales in float16 and a float32 result:

- up to cuda_gemv.MAX_ROWS static rows, or a free batch: the GEMV kernel of cuda_gemv.py, weights packed
  at build time (int4 by their storage bits, else int8 codes);
- more static rows (a prefill): a float16 GEMM on tensor cores (cuda_fp16_gemm.py), the weights' int8
  codes dequantized to float16 (code * scale, rounded once) as they are copied to shared memory. The GEMV
  would re-read the weights once per block of rows."""
from __future__ import annotations

import numpy as np
import torch
import tvm
from torch import fx
from tvm import relax, te, tirx

from ...ir import meta
from ...ir.rewrite import constant
from .cuda_gemv import MAX_ROWS, default_config, gemv_prim_func
from .cuda_weight_codes import CODES, Codes
from .layout import Layouts
from .ops import size_product
from .var_names import var_name

qc = torch.ops.qcompile


def codes_of(gm: fx.GraphModule, node: fx.Node) -> Codes | None:
    """The packed format of the node's (constant) weight, or None where the GEMV cannot take it (K or the
    group size not whole 128-bit chunks)."""
    _, w, _, _, group_size = node.args
    codes = CODES.get(meta.storage_bits(w) or 8)
    k = constant(gm, w).shape[1]
    return codes if k % codes.chunk == 0 and group_size % codes.chunk == 0 else None


def _static_rows(gm: fx.GraphModule, x: fx.Node) -> int | None:
    """Rows of the activation where every input size is fixed, else None (the example's sizes say nothing)."""
    free = any(not isinstance(d, int) for p in gm.graph.find_nodes(op="placeholder") for d in (meta.input_dims(p) or ()))
    return None if free else int(np.prod(x.meta["val"].shape[:-1]))


def _prefill(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether the node's rows are static and more than the GEMV takes."""
    rows = _static_rows(gm, node.args[0])
    return rows is not None and rows > MAX_ROWS


def _constant_weights(node: fx.Node) -> bool:
    _, w, scale, bias, _ = node.args
    return w.op == "get_attr" and scale.op == "get_attr" and (bias is None or bias.op == "get_attr")


def plan(gm: fx.GraphModule, target) -> dict[fx.Node, fx.Node]:
    """linear_weight_only nodes the GEMV or the tensor-core GEMM computes on a CUDA `target` (each node is
    its own accumulator)."""
    if target is None or tvm.target.Target(target).kind.name != "cuda":
        return {}
    return {node: node for node in gm.graph.find_nodes(op="call_function", target=qc.linear_weight_only.default)
            if _constant_weights(node) and (_prefill(gm, node) or codes_of(gm, node) is not None)}


def dequantized_gemm(x: te.Tensor, codes: te.Tensor, scales: te.Tensor, bias: te.Tensor, group_size: int) -> te.Tensor:
    """y[m, n] = sum_k x[m, k] w[n, k] + bias[n] in float32 from float16 x and w = float16(code * scale)."""
    n, k = codes.shape
    w = te.compute((n, k), lambda i, j: codes[i, j].astype("float16") * scales[i, tirx.floordiv(j, group_size)],
                   name="dequantize")
    r = te.reduce_axis((0, k), "k")
    y = te.compute((x.shape[0], n), lambda i, j: te.sum(x[i, r].astype("float32") * w[j, r].astype("float32"), axis=r),
                   name="linear_weight_only")
    return te.compute(y.shape, lambda i, j: y[i, j] + bias[j], name="linear_weight_only_bias")


def _gemv(bb: relax.BlockBuilder, gm: fx.GraphModule, acc: fx.Node, halves: relax.Expr, consts: list) -> relax.Expr:
    _, w_n, _, _, group_size = acc.args
    codes = codes_of(gm, acc)
    n, k = constant(gm, w_n).shape
    m = halves.ty.shape.values[0]
    name = f"gemv_{acc.name}"
    static_m = int(m) if isinstance(m, tirx.IntImm) else None
    func = gemv_prim_func(n, k, group_size, codes, default_config(static_m, n, k))
    gv = bb.add_func(func.with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name), name)
    packed = relax.const(codes.pack(constant(gm, w_n).numpy()), "uint32")
    return bb.emit(relax.call_tir(gv, [halves, packed, *consts], relax.TensorType((m, n), "float32")), var_name(acc))


def _gemm(bb: relax.BlockBuilder, gm: fx.GraphModule, acc: fx.Node, halves: relax.Expr, consts: list) -> relax.Expr:
    _, w_n, _, _, group_size = acc.args
    codes = relax.const(constant(gm, w_n).numpy(), "int8")
    return bb.emit_te(lambda x, w, s, b: dequantized_gemm(x, w, s, b, group_size), halves, codes, *consts,
                      primfunc_name_hint=f"linear_weight_only_{acc.name}", name_hint=var_name(acc))


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, acc: fx.Node, layouts: Layouts, target,
         choose_tiling=None) -> relax.Expr:
    x_n, w_n, scale_n, bias_n, _ = acc.args
    n, k = constant(gm, w_n).shape
    x = layouts.get(x_n, False)
    *outer, _ = x.ty.shape.values
    rows = x if len(outer) == 1 else bb.emit(relax.op.reshape(x, (size_product(outer), k)), var_name(acc))
    halves = bb.emit(relax.op.astype(rows, "float16"), var_name(acc))
    bias = constant(gm, bias_n).float().numpy() if bias_n is not None else np.zeros(n, np.float32)
    consts = [relax.const(constant(gm, scale_n).to(torch.float16).numpy(), "float16"), relax.const(bias, "float32")]
    kernel = _gemm if _prefill(gm, acc) else _gemv
    out = kernel(bb, gm, acc, halves, consts)
    return out if len(outer) == 1 else bb.emit(relax.op.reshape(out, (*outer, n)), var_name(result))
