"""Float attention (aten.scaled_dot_product_attention left in float between a dequantize and a quantize),
lowered as torch defines it: softmax(Q K^T * scale + mask) V, with the masks, scale and grouped-query
heads of torch's signature.

TVM's importer has its own converter, to one `nn.attention` op; it ignores `scale`, takes only 4-D float
masks and drops `enable_gqa`. And its legalized kernel holds both batch matmuls and the softmax in one
function, which no GPU schedule rule takes: dlight's fallback computed every score by one thread reading
its row and column from global memory. Written as Relax matmul / softmax / matmul, each product is a
kernel of its own (on CUDA, dlight's matmul rule tiles it through shared memory, the scale and the mask
fused as its epilogue) and the softmax another."""
from __future__ import annotations

import math

import numpy as np
import torch
import tvm
from torch import fx
from tvm import relax

aten = torch.ops.aten


class AttentionError(ValueError):
    pass


def _arg(node: fx.Node, index: int, name: str, default=None):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _additive(bb: relax.BlockBuilder, mask: relax.Expr, dtype: str) -> relax.Expr:
    """A mask as what is added to the scores: a boolean one (True = attend) becomes 0 / -inf. A constant one
    becomes that float constant here, so that no kernel reads booleans: TVM 0.27's CUDA code loads two bools
    as a ushort2 (four bytes, two per value: wrong masks, found by cuda/emulator/kernels.py) or does not compile."""
    if mask.ty.dtype == "bool" or "int" in str(mask.ty.dtype):  # some producers hand a boolean over as integers
        if isinstance(mask, tvm.ir.expr.Constant):
            keep = mask.value.numpy().astype(bool)
            return relax.const(np.where(keep, 0.0, -np.inf).astype(dtype), dtype)
        keep = bb.emit(relax.op.astype(mask, "bool"))
        return bb.emit(relax.op.where(keep, relax.const(0.0, dtype), relax.const(float("-inf"), dtype)))
    return mask


def _causal(bb: relax.BlockBuilder, queries, keys, dtype: str) -> relax.Expr:
    """torch's is_causal mask: query i attends keys 0..i (top left aligned), as 0 / -inf: -inf above the
    diagonal (in float throughout: no boolean tensor, see _additive)."""
    ones = bb.emit(relax.op.ones(relax.ShapeExpr([queries, keys]), dtype))  # (TVM 0.27 cannot legalize `full`)
    blocked = bb.emit(relax.op.multiply(ones, relax.const(float("-inf"), dtype)))
    return bb.emit(relax.op.triu(blocked, 1))


def _repeat_heads(bb: relax.BlockBuilder, t: relax.Expr, heads, rank: int) -> relax.Expr:
    """Grouped-query attention: each key / value head serves heads // its heads query heads."""
    groups = int(heads) // int(t.ty.shape.values[-3])
    return t if groups == 1 else bb.emit(relax.op.repeat(t, groups, axis=rank - 3))


def convert(bb: relax.BlockBuilder, node: fx.Node, env) -> relax.Expr:
    if _arg(node, 4, "dropout_p", 0.0):
        raise AttentionError(f"{node.name}: attention dropout is for training; export the model in eval mode")
    q, k, v = (env[a] for a in node.args[:3])
    dtype = str(q.ty.dtype)
    rank = len(q.ty.shape.values)
    *_, queries, head_dim = q.ty.shape.values
    if node.kwargs.get("enable_gqa"):
        k, v = (_repeat_heads(bb, t, q.ty.shape.values[-3], rank) for t in (k, v))
    scale = node.kwargs.get("scale")
    scale = 1 / math.sqrt(int(head_dim)) if scale is None else scale
    keys_t = bb.emit(relax.op.permute_dims(k, [*range(rank - 2), rank - 1, rank - 2]))
    scores = bb.emit(relax.op.multiply(relax.op.matmul(q, keys_t), relax.const(scale, dtype)))
    mask = _arg(node, 3, "attn_mask")
    if mask is not None:
        scores = bb.emit(relax.op.add(scores, _additive(bb, env[mask], dtype)))
    if _arg(node, 5, "is_causal", False):
        scores = bb.emit(relax.op.add(scores, _causal(bb, queries, k.ty.shape.values[-2], dtype)))
    return bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(scores, axis=-1)), v))


# aten op -> its converter in float islands, instead of TVM's importer's
CONVERTERS = {aten.scaled_dot_product_attention.default: convert}
