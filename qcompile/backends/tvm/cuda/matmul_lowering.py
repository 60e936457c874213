"""`qc.matmul_int` (activation x activation, batched: attention's Q.K^T and P.V) on CUDA targets: a batch
of GEMMs written so that the tensor-core rule (gemm_rule.TensorCoreGemm) schedules it like a linear.

The mma multiplies the stored bytes (uint8 or int8, either operand), so the zero points come out of the
product:

    sum_k (a - za)(b - zb) = sum_k a b  -  zb (sum_k a - K za)  -  za sum_k b

in int32, wrapping like the reference's accumulator, hence exact whenever the true value fits int32. The
kernels, with the output's batch dims (torch.matmul's broadcast) and K innermost in both operands, as
ldmatrix reads them:
- A [*batch, M, K]: A itself, or a copy where A is broadcast over the batch dims;
- B transposed to [*batch, N, K] (FuseOps folds B's own producer into this copy: in Q.K^T the transpose
  of K, so that the copy reads K's rows as they are stored);
- row terms zb (sum_k a - K za) [*batch, M] and column terms za sum_k b [*batch, N], reductions made only
  for nonzero zero points;
- the GEMM, with `acc - rows - cols` as its epilogue block, into which FuseOps fuses what follows (the
  requantize of P.V, the dequantize of the scores).

Any size may be free (a free K is copied to shared memory byte by byte: no vector width is known to
divide it); a static K or N must be at least MIN_SIZE. Other matmuls keep the TE definition of ops.py,
which dlight's CUDA-core matmul schedules."""
from __future__ import annotations

import torch
import tvm
from torch import fx
from tvm import relax, te, tirx

from ..layout import Layouts
from ..ops import broadcast_batch, is_one, matmul_operands_ok, operand_batch
from ..var_names import var_name

qc = torch.ops.qcompile


# Smaller products (a static K or N below one mma tile's 16) would mostly multiply padding: they keep the
# TE definition.
MIN_SIZE = 16


def _takes(node: fx.Node) -> bool:
    if node.target != qc.matmul_int.default or not matmul_operands_ok(node):
        return False
    k, n = (x.meta["val"].shape[-1] for x in node.args[:2])
    return all(not isinstance(d, int) or d >= MIN_SIZE for d in (k, n))


def plan(gm: fx.GraphModule, target) -> dict[fx.Node, fx.Node]:
    """matmul_int nodes the batched GEMM computes on a CUDA `target` (each its own accumulator: the
    requantize after it stays a TE op, fused into the GEMM's epilogue)."""
    if target is None or tvm.target.Target(target).kind.name != "cuda":
        return {}
    return {n: n for n in gm.graph.find_nodes(op="call_function", target=qc.matmul_int.default) if _takes(n)}


def _operand_a(bb: relax.BlockBuilder, a: relax.Expr, out_batch: list, name: str) -> relax.Expr:
    """A with the output's batch dims: itself, or a copy where A is broadcast over them."""
    *a_batch, m, k = a.ty.shape.values
    if len(a_batch) == len(out_batch) and not any(is_one(d) and not is_one(o) for d, o in zip(a_batch, out_batch)):
        return a

    def broadcast(t):
        return te.compute((*out_batch, m, k), lambda *i: t(*operand_batch(i[:-2], a_batch), *i[-2:]), name="broadcast_a")

    return bb.emit_te(broadcast, a, primfunc_name_hint="broadcast_a", name_hint=name)


def _operand_b(bb: relax.BlockBuilder, b: relax.Expr, out_batch: list, name: str) -> relax.Expr:
    """B [.., K, N] as [*batch, N, K]."""
    *b_batch, k, n = b.ty.shape.values

    def transpose(t):
        return te.compute((*out_batch, n, k), lambda *i: t(*operand_batch(i[:-2], b_batch), i[-1], i[-2]), name="transpose_b")

    return bb.emit_te(transpose, b, primfunc_name_hint="transpose_b", name_hint=name)


def row_terms(a: te.Tensor, za: int, zb: int) -> te.Tensor:
    """zb (sum_k a - K za) for every row of A [*batch, M, K]."""
    k = a.shape[-1]
    r = te.reduce_axis((0, k), "k")
    sums = te.compute(a.shape[:-1], lambda *i: te.sum(a(*i, r).astype("int32"), axis=r), name="row_sums")
    depth = k.astype("int32") if isinstance(k, tirx.Var) else int(k)  # a free K (P.V of a free length)
    return te.compute(a.shape[:-1], lambda *i: (sums(*i) - depth * za) * zb, name="row_terms")


def col_terms(bt: te.Tensor, za: int) -> te.Tensor:
    """za sum_k b for every column of B, given as [*batch, N, K]."""
    r = te.reduce_axis((0, bt.shape[-1]), "k")
    sums = te.compute(bt.shape[:-1], lambda *i: te.sum(bt(*i, r).astype("int32"), axis=r), name="col_sums")
    return te.compute(bt.shape[:-1], lambda *i: sums(*i) * za, name="col_terms")


def gemm(a: te.Tensor, bt: te.Tensor, rows: te.Tensor | None = None, cols: te.Tensor | None = None) -> te.Tensor:
    """out[.., m, n] = sum_k a[.., m, k] bt[.., n, k] - rows[.., m] - cols[.., n]: the multiply written as
    linear_int writes it (int32 casts), which the tensor-core intrinsic matches."""
    *batch, m, k = a.shape
    n = bt.shape[-2]
    r = te.reduce_axis((0, k), "k")

    def product(*i):
        return te.sum(a(*i[:-1], r).astype("int32") * bt(*i[:-2], i[-1], r).astype("int32"), axis=r)

    acc = te.compute((*batch, m, n), product, name="matmul_int_acc")
    if rows is None and cols is None:
        return acc

    def corrected(*i):
        v = acc(*i)
        v = v - rows(*i[:-1]) if rows is not None else v
        return v - cols(*i[:-2], i[-1]) if cols is not None else v

    return te.compute((*batch, m, n), corrected, name="matmul_int")


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, acc: fx.Node, layouts: Layouts,
         target) -> relax.Expr:
    a_n, b_n, za, zb = acc.args
    a, b = layouts.get(a_n, False), layouts.get(b_n, False)
    name = var_name(acc)
    out_batch = broadcast_batch(a.ty.shape.values[:-2], b.ty.shape.values[:-2])
    a = _operand_a(bb, a, out_batch, name)
    bt = _operand_b(bb, b, out_batch, name)
    # The zero points' terms, each a kernel of its own, present only where its factor is not 0.
    terms = {}
    if zb:
        terms["rows"] = bb.emit_te(lambda t: row_terms(t, za, zb), a, primfunc_name_hint="row_terms", name_hint=name)
    if za:
        terms["cols"] = bb.emit_te(lambda t: col_terms(t, za), bt, primfunc_name_hint="col_terms", name_hint=name)

    def kernel(x, y, *t):
        return gemm(x, y, **dict(zip(terms, t)))

    return bb.emit_te(kernel, a, bt, *terms.values(), primfunc_name_hint="matmul_int", name_hint=var_name(result))
