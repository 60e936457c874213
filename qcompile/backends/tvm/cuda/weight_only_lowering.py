"""`linear_weight_only` on CUDA targets, with the activations cast to float16 before the kernel (the cast
fuses into the producer's kernel), group scales in float16 and a float32 result:

- up to gemv_kernel.MAX_ROWS static rows, or a free batch: a GEMV kernel, weights packed at build time
  (int4 by their storage bits, else int8 codes). GEMV_KERNELS has two, chosen by the CUDA backend's
  `gemv` option: on tensor cores (mma_gemv_kernel.py) and on CUDA cores (gemv_kernel.py). The default,
  "auto", takes the first of GEMV_KERNELS, in order, that takes the layer's K and group size;
- more static rows (a prefill): a float16 GEMM on tensor cores (fp16_gemm_rule.py), the weights' codes
  (int4 packed 8 to a word in k order, int8 as they are) dequantized to float16 (code * scale, rounded
  once) as they are copied to shared memory. The GEMV would re-read the weights once per block of rows."""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import torch
import tvm
from torch import fx
from tvm import relax, te, tirx

from ....errors import UsageError
from ....ir import meta
from ....ir.rewrite import constant
from ..layout import Layouts
from ..ops import size_product
from ..var_names import var_name
from .gemv_kernel import MAX_ROWS, default_config, gemv_prim_func
from .mma_gemv_kernel import default_mma_config, mma_gemv_prim_func
from .weight_codes import CODES, MMA_CODES, CodeWidth

qc = torch.ops.qcompile


class CudaCoreGemv:
    """gemv_kernel.py: weights [N, K / V] words, scales [N, groups]."""

    def supports(self, bits: int, k: int, group_size: int) -> bool:
        chunk = CODES[bits].chunk
        return k % chunk == 0 and group_size % chunk == 0

    def prim_func(self, m: int | None, n: int, k: int, group_size: int, bits: int) -> tirx.PrimFunc:
        return gemv_prim_func(n, k, group_size, CODES[bits], default_config(m, n, k))

    def constants(self, codes: np.ndarray, scale: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
        return CODES[bits].pack(codes), scale


class TensorCoreGemv:
    """mma_gemv_kernel.py: weights in A-fragment order, scales [groups, rows]."""

    def supports(self, bits: int, k: int, group_size: int) -> bool:
        step = MMA_CODES[bits].step_k
        return k % step == 0 and group_size % step == 0

    def prim_func(self, m: int | None, n: int, k: int, group_size: int, bits: int) -> tirx.PrimFunc:
        return mma_gemv_prim_func(n, k, group_size, MMA_CODES[bits], default_mma_config(m, n, k, MMA_CODES[bits]))

    def constants(self, codes: np.ndarray, scale: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
        return MMA_CODES[bits].pack(codes), MMA_CODES[bits].arrange_scales(scale)


# In the order "auto" tries them. Tensor cores first: faster at every int4 shape and row count of
# bench/cuda/int4_gemv.py on the H200 (bench/results/cuda/2026-11-26-h200-7: 4096 x 4096 at M = 1 4.5 us
# against 5.5, at M = 16 9.1 against 71.7).
# The CUDA-core kernel takes K and group sizes in multiples of 8 (int4) where the mma needs 64.
GEMV_KERNELS = {"tensor_cores": TensorCoreGemv(), "cuda_cores": CudaCoreGemv()}
AUTO = "auto"
DEFAULT_GEMV = AUTO
_GEMV = contextvars.ContextVar("gemv", default=DEFAULT_GEMV)  # the `gemv` option of the lowering under way


def check_gemv(name: str) -> str:
    if name != AUTO and name not in GEMV_KERNELS:
        raise UsageError(f"gemv must be one of {', '.join(map(repr, (AUTO, *GEMV_KERNELS)))}, got {name!r}")
    return name


@contextlib.contextmanager
def gemv_kernel(name: str):
    """Inside: decode-shaped weight-only Linear layers lower to GEMV_KERNELS[name]."""
    token = _GEMV.set(check_gemv(name))
    try:
        yield
    finally:
        _GEMV.reset(token)


def _bits(w: fx.Node) -> int:
    """Code width of a weight constant: its storage bits, else 8 (int8 codes)."""
    return meta.storage_bits(w) or 8


def _gemv_kernel(gm: fx.GraphModule, node: fx.Node):
    """The GEMV kernel that computes the node (its constant weight's K and group size whole loads of
    codes), or None."""
    _, w, _, _, group_size = node.args
    choice = _GEMV.get()
    names = GEMV_KERNELS if choice == AUTO else (choice,)
    bits, k = _bits(w), constant(gm, w).shape[1]
    return next((GEMV_KERNELS[n] for n in names if GEMV_KERNELS[n].supports(bits, k, group_size)), None)


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
            if _constant_weights(node) and (_prefill(gm, node) or _gemv_kernel(gm, node) is not None)}


def _code(weights: te.Tensor, i, j):
    """Code (i, j) of int8 codes [N, K], or of CodeWidth.pack_in_order's int4 words [N, K / 8], as int32."""
    if weights.dtype == "int8":
        return weights[i, j].astype("int32")
    width = CodeWidth(4)
    shift = (tirx.floormod(j, width.per_word) * width.bits).astype("uint32")
    unsigned = tirx.bitwise_and(tirx.shift_right(weights[i, tirx.floordiv(j, width.per_word)], shift),
                                tirx.const((1 << width.bits) - 1, "uint32"))
    return unsigned.astype("int32") - width.offset


def dequantized_gemm(x: te.Tensor, weights: te.Tensor, scales: te.Tensor, bias: te.Tensor, group_size: int) -> te.Tensor:
    """y[m, n] = sum_k x[m, k] w[n, k] + bias[n] in float32 from float16 x and w = float16(code * scale);
    weights: int8 codes [N, K] or int4 words [N, K / 8] (CodeWidth.pack_in_order)."""
    n, k = scales.shape[0], x.shape[1]
    w = te.compute((n, k), lambda i, j: _code(weights, i, j).astype("float16") * scales[i, tirx.floordiv(j, group_size)],
                   name="dequantize")
    r = te.reduce_axis((0, k), "k")
    y = te.compute((x.shape[0], n), lambda i, j: te.sum(x[i, r].astype("float32") * w[j, r].astype("float32"), axis=r),
                   name="linear_weight_only")
    return te.compute(y.shape, lambda i, j: y[i, j] + bias[j], name="linear_weight_only_bias")


def _gemv(bb: relax.BlockBuilder, gm: fx.GraphModule, acc: fx.Node, halves: relax.Expr, scale: np.ndarray,
          bias: relax.Expr) -> relax.Expr:
    _, w_n, _, _, group_size = acc.args
    kernel, bits = _gemv_kernel(gm, acc), _bits(w_n)
    n, k = constant(gm, w_n).shape
    m = halves.ty.shape.values[0]
    name = f"gemv_{acc.name}"
    func = kernel.prim_func(int(m) if isinstance(m, tirx.IntImm) else None, n, k, group_size, bits)
    gv = bb.add_func(func.with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name), name)
    words, scales = kernel.constants(constant(gm, w_n).numpy(), scale, bits)
    args = [halves, relax.const(words, "uint32"), relax.const(scales, "float16"), bias]
    return bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), "float32")), var_name(acc))


def _gemm(bb: relax.BlockBuilder, gm: fx.GraphModule, acc: fx.Node, halves: relax.Expr, scale: np.ndarray,
          bias: relax.Expr) -> relax.Expr:
    _, w_n, _, _, group_size = acc.args
    codes = constant(gm, w_n).numpy()
    int4 = _bits(w_n) == 4 and codes.shape[1] % CodeWidth(4).per_word == 0
    weights = relax.const(CodeWidth(4).pack_in_order(codes), "uint32") if int4 else relax.const(codes, "int8")
    return bb.emit_te(lambda x, w, s, b: dequantized_gemm(x, w, s, b, group_size), halves, weights,
                      relax.const(scale, "float16"), bias,
                      primfunc_name_hint=f"linear_weight_only_{acc.name}", name_hint=var_name(acc))


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, acc: fx.Node, layouts: Layouts,
         target) -> relax.Expr:
    x_n, w_n, scale_n, bias_n, _ = acc.args
    n, k = constant(gm, w_n).shape
    x = layouts.get(x_n, False)
    *outer, _ = x.ty.shape.values
    rows = x if len(outer) == 1 else bb.emit(relax.op.reshape(x, (size_product(outer), k)), var_name(acc))
    halves = bb.emit(relax.op.astype(rows, "float16"), var_name(acc))
    bias = constant(gm, bias_n).float().numpy() if bias_n is not None else np.zeros(n, np.float32)
    scale = constant(gm, scale_n).to(torch.float16).numpy()
    kernel = _gemm if _prefill(gm, acc) else _gemv
    out = kernel(bb, gm, acc, halves, scale, relax.const(bias, "float32"))
    return out if len(outer) == 1 else bb.emit(relax.op.reshape(out, (*outer, n)), var_name(result))
