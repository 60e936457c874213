"""Lower `qc.matmul_int` (with the requantize that follows, or alone) to the dot-product kernel of
matmul_kernel.py where the target's ISA has one: B packed and A converted (when its bytes are not the ones
the instruction reads) by TE kernels on every call, since both operands are run-time activations."""
from __future__ import annotations

import torch
from torch import fx
from tvm import relax, te
from tvm import tirx as tir

from ....ir.rewrite import constant
from ..layout import Layouts
from ..ops import (
    broadcast_batch,
    is_one,
    matmul_operands_ok,
    operand_batch,
    size_product,
    tvm_dtype,
)
from ..var_names import var_name
from .gemm_kernel import Requant
from .gemm_lowering import accumulators_taken
from .isa import Isa
from .matmul_kernel import (
    MatmulSpec,
    by_element,
    matmul_prim_func,
    matmul_tiling,
    supported_isa,
)

qc = torch.ops.qcompile


# ---------------------------------------------------------------- which nodes
def _requant_fusable(gm: fx.GraphModule, rq: fx.Node) -> bool:
    """Beyond what every hand-written kernel asks of its requantize: one multiplier and a shift the tile's
    64-bit rounding handles."""
    mult, shift = rq.args[2:4]
    return (isinstance(mult, fx.Node) and constant(gm, mult).numel() == 1
            and 1 <= int(constant(gm, shift)) <= 62)



def plan(gm: fx.GraphModule, target) -> dict[fx.Node, fx.Node]:
    """result node -> its matmul_int node, for every matmul the kernel takes over: a requantize with its
    matmul (requantized on the register tile), or a matmul alone (int32 out)."""
    if supported_isa(target) is None:
        return {}
    return accumulators_taken(gm, lambda n: n.target == qc.matmul_int.default and matmul_operands_ok(n),
                              lambda rq: _requant_fusable(gm, rq))


# ---------------------------------------------------------------- run-time packing (TE)
def _static(d) -> int | None:
    return int(d) if isinstance(d, (int, tir.IntImm)) else None


def _batch_index(bo, out_batch: list, t_batch: list) -> list:
    """The operand's batch coordinates for flat output batch index `bo` (broadcast dims read 0)."""
    coords, rest = [], bo
    for d in reversed(out_batch):
        d = tir.const(d, bo.ty) if isinstance(d, int) else d.astype(str(bo.ty))
        coords.append(tir.floormod(rest, d))
        rest = tir.floordiv(rest, d)
    return operand_batch(coords[::-1], t_batch)


def _ceil_div(x, d: int):
    s = _static(x)
    return -(-s // d) if s is not None else tir.floordiv(x + (d - 1), d)


def _pack_b(b: te.Tensor, out_batch: list, bo_size, nr: int, g: int) -> te.Tensor:
    *b_batch, k, n = b.shape
    no, kw = _ceil_div(n, nr), _ceil_div(k, g)
    flip = str(b.dtype) == "uint8"

    def body(bo, po, kk, j):
        col, row = po * nr + j // g, kk * g + j % g
        v = b(*_batch_index(bo, out_batch, b_batch), row, col)
        v = (v.astype("int32") - 128).astype("int8") if flip else v
        # Guards only where padding can occur: with static sizes that divide, the pack is a plain copy.
        inside = [c for c, size, step in ((row < k, k, g), (col < n, n, nr)) if _static(size) is None or _static(size) % step]
        return tir.if_then_else(tir.all(*inside), v, tir.const(0, "int8")) if inside else v

    return te.compute((bo_size, no, kw, nr * g), body, name="pack_b")


def _native_a(isa: Isa) -> str:
    """The A dtype isa.dot reads without flipping each word in the K loop: sdot flips uint8 to int8 (an eor
    per A word, which also keeps LLVM from loading the word with ld1r), so it wants int8 bytes, which its
    internal flip and the kernel's int8 flip then cancel; vpdpbusd reads uint8."""
    return "int8" if isa.a_offset == 128 else "uint8"


def _pad_a(a: te.Tensor, out_batch: list, bo_size, g: int, zp: int, dtype: str) -> te.Tensor:
    """A as [BO, M, KP] in `dtype` (uint8 <-> int8 by a shift of 128), K padded with the zero point."""
    *a_batch, m, k = a.shape
    kp = _ceil_div(k, g) * g
    shift = {("uint8", "int8"): -128, ("int8", "uint8"): 128}.get((str(a.dtype), dtype), 0)

    def body(bo, i, kk):
        v = a(*_batch_index(bo, out_batch, a_batch), i, tir.min(kk, k - 1))
        v = (v.astype("int32") + shift).astype(dtype) if shift else v
        if _static(k) is not None and _static(k) % g == 0:
            return v
        return tir.if_then_else(kk < k, v, tir.const(zp + shift, dtype))

    return te.compute((bo_size, m, kp), body, name="pad_a")


def emit(bb: relax.BlockBuilder, gm: fx.GraphModule, result: fx.Node, mm: fx.Node, layouts: Layouts,
         target) -> relax.Expr:
    """The matmul kernel computing `result`: `mm` requantized when result is its requantize, else `mm`."""
    isa = supported_isa(target)
    a_n, b_n, a_zp, b_zp = mm.args
    a, b = layouts.get(a_n, False), layouts.get(b_n, False)
    *a_batch, m, k = a.ty.shape.values
    *b_batch, _, n = b.ty.shape.values
    out_batch = broadcast_batch(a_batch, b_batch)
    bo_size = size_product(out_batch)
    requant, mult = None, 0
    if result is not mm:
        _, _, mult_n, shift_n, _axis, out_zp, qmin, qmax, dtype = result.args
        requant = Requant(int(constant(gm, shift_n)), out_zp, qmin, qmax, str(dtype).replace("torch.", ""))
        mult = int(constant(gm, mult_n).reshape(()))
    g = isa.group
    a_dtype, a_native = tvm_dtype(a_n.meta["val"].dtype), _native_a(isa)
    in_place = (a_dtype == a_native and _static(k) is not None and _static(k) % g == 0
                and len(a_batch) == len(out_batch)
                and not any(is_one(d) and not is_one(o) for d, o in zip(a_batch, out_batch)))
    if in_place:
        a3 = bb.emit(relax.op.reshape(a, (bo_size, m, k)), var_name(mm))
    else:  # a copy (into which FuseOps folds A's producers: the transpose of Q, the quantize of P)
        a3 = bb.emit_te(lambda t: _pad_a(t, out_batch, bo_size, g, a_zp, a_native), a,
                        primfunc_name_hint=f"pad_a_{mm.name}", name_hint=var_name(mm))
        a_zp += {("uint8", "int8"): -128, ("int8", "uint8"): 128}.get((a_dtype, a_native), 0)
        a_dtype = a_native
    spec = MatmulSpec(isa, matmul_tiling(isa, _static(m), _static(n), _static(k)), a_dtype, tvm_dtype(b_n.meta["val"].dtype), a_zp, b_zp, requant, mult,
                      by_element(isa))
    bp = bb.emit_te(lambda t: _pack_b(t, out_batch, bo_size, spec.tiling.nr, g), b,
                    primfunc_name_hint=f"pack_b_{mm.name}", name_hint=var_name(mm))
    name = f"matmul_{mm.name}"
    func = matmul_prim_func(spec, (bo_size, m, n, k)).with_attr("tirx.is_scheduled", True).with_attr("global_symbol", name)
    gv = bb.add_func(func, name)
    out_dtype = requant.out_dtype if requant else "int32"
    out = bb.emit(relax.call_tir(gv, [a3, bp], relax.TensorType((bo_size, m, n), out_dtype)), var_name(result))
    return bb.emit(relax.op.reshape(out, (*out_batch, m, n)), var_name(result))
