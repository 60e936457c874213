"""Lower qcompile's integer fx graph to a Relax module whose ops are TE-defined TIR functions."""
from __future__ import annotations

import operator

import torch
from torch import fx
from tvm import relax

from ...ir.printer import target_name
from ...ir.rewrite import constant
from .ops import CONVERTERS, tvm_dtype


class LoweringError(NotImplementedError):
    """An op of the integer graph has no TVM lowering yet."""


def _shape(node: fx.Node, dynamic: dict[int, object] | None = None) -> list:
    return list(node.meta["val"].shape)


def _const(t: torch.Tensor) -> relax.Expr:
    return relax.const(t.detach().contiguous().numpy(), tvm_dtype(t.dtype))


def unsupported_ops(gm: fx.GraphModule) -> list[str]:
    return sorted({
        target_name(n) for n in gm.graph.nodes
        if n.op == "call_function" and n.target not in CONVERTERS and n.target is not operator.getitem
    })


def to_relax(gm: fx.GraphModule, input_shapes: list[list] | None = None):
    """A Relax IRModule with one function `main(*inputs) -> tuple(outputs)`."""
    missing = unsupported_ops(gm)
    if missing:
        raise LoweringError(f"the TVM backend cannot lower {', '.join(missing)} yet")
    bb = relax.BlockBuilder()
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    params = []
    for i, p in enumerate(placeholders):
        shape = input_shapes[i] if input_shapes is not None else _shape(p)
        params.append(relax.Var(p.name, relax.TensorType(shape, tvm_dtype(p.meta["val"].dtype))))
    env: dict[fx.Node, relax.Expr] = dict(zip(placeholders, params))
    with bb.function("main", params):
        with bb.dataflow():
            for node in gm.graph.nodes:
                if node.op == "get_attr":
                    env[node] = _const(constant(gm, node))
                elif node.op == "call_function":
                    env[node] = _emit(bb, node, env)
                elif node.op == "output":
                    outs = [env[a] for a in node.args[0]]
                    result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get()


def _emit(bb: relax.BlockBuilder, node: fx.Node, env: dict) -> relax.Expr:
    """emit_te the node's converter: tensor arguments (also inside lists) go through emit_te as
    TE tensors, everything else (ints, lists of ints, dtypes) is passed to the converter as is."""
    tensors = [env[n] for n in node.all_input_nodes]
    fn = CONVERTERS[node.target]

    def build(*te_tensors):
        lookup = dict(zip(node.all_input_nodes, te_tensors))
        args = fx.node.map_arg(node.args, lambda n: lookup[n])
        return fn(node, *args)

    return bb.emit_te(build, *tensors, primfunc_name_hint=node.name)
