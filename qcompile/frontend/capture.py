"""Capture with torch.export and normalise to the op set the passes expect."""
from __future__ import annotations

import contextlib
import copy
import inspect
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch._decomp import decomposition_table
from torch.utils import _pytree as pytree

from ..errors import UsageError
from ..ir import meta
from ..ir.rewrite import constant
from .canonical import canonicalize

aten = torch.ops.aten


class CaptureError(RuntimeError):
    """torch.export could not capture the model; the exporter's reason is attached."""


@dataclass
class Captured:
    gm: fx.GraphModule  # flat inputs -> tuple of flat outputs
    in_spec: pytree.TreeSpec
    out_spec: pytree.TreeSpec
    signature: list[dict]  # per flat input: {"shape": [int or None (dynamic)], "dtype": str}


def record_input_dims(gm: fx.GraphModule, declared: dict) -> None:
    """Keep each placeholder's symbolic shape (meta.input_dims) before shapes are made concrete.
    `declared`: torch.export's range_constraints (sympy expression -> the user's range), when known."""
    for node in gm.graph.find_nodes(op="placeholder"):
        shape = node.meta["val"].shape
        meta.set_input_dims(node, [d if isinstance(d, int) else _free_dim(d, declared) for d in shape])


def _free_dim(size: torch.SymInt, declared: dict) -> meta.FreeDim:
    expr = size.node.expr
    rng = declared.get(expr) or size.node.shape_env.bound_sympy(expr)
    # (torch's int_oo says is_finite; it is not an Integer)
    return meta.FreeDim(expr, int(rng.lower), int(rng.upper) if rng.upper.is_Integer else None)


def input_signature(gm: fx.GraphModule) -> list[dict]:
    """Names, shapes and dtypes the graph accepts; symbolic dims -> None in "shape", and [axis, expr, min,
    max] in "free" (dims with the same expr must agree). Checked by frontend/signature.py."""
    sig = []
    for node in gm.graph.find_nodes(op="placeholder"):
        dims = meta.input_dims(node)
        free = [[axis, str(d.expr), d.min, d.max] for axis, d in enumerate(dims) if isinstance(d, meta.FreeDim)]
        entry = {
            "name": node.name,
            "shape": [d if isinstance(d, int) else None for d in dims],
            "dtype": str(node.meta["val"].dtype).replace("torch.", ""),
            "free": free,
        }
        rows = _table_rows(gm, node)
        if rows is not None:
            entry["index_bound"] = rows
        sig.append(entry)
    return sig


def _table_rows(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """The rows of the smallest embedding table this input indexes, itself or through views that keep its
    values (an EmbeddingBag's ids are flattened first): compiled gathers read memory at the index without
    a bounds check, so calls check the indices against it."""
    rows, frontier = [], [node]
    while frontier:
        ids = frontier.pop()
        for u in ids.users:
            if u.target == aten.embedding.default and u.args[1] is ids and u.args[0].op == "get_attr":
                rows.append(constant(gm, u.args[0]).shape[0])
            elif u.target in _INDEX_VIEWS and u.args[0] is ids:
                frontier.append(u)
    return min(rows) if rows else None


_INDEX_VIEWS = {aten.reshape.default, aten.view.default, aten.flatten.using_ints, aten.unsqueeze.default,
                aten.squeeze.dim, aten.squeeze.dims, aten.permute.default, aten.transpose.int, aten.clone.default}


# In-place and alias variants that export emits, mapped to the one functional op the passes match.
_FUNCTIONAL = {
    aten.hardtanh_.default: aten.hardtanh.default,
    aten.relu_.default: aten.relu.default,
    aten.clamp_.default: aten.clamp.default,
    aten.add_.Tensor: aten.add.Tensor,
    aten.mul_.Tensor: aten.mul.Tensor,
    aten.hardswish_.default: aten.hardswish.default,
    aten.sigmoid_.default: aten.sigmoid.default,
    aten.silu_.default: aten.silu.default,
}
_IDENTITIES = {aten.alias.default, aten.detach.default, aten.detach_.default, aten.lift_fresh_copy.default}


def _is_identity(node: fx.Node) -> bool:
    if node.target in _IDENTITIES:
        return True
    # Dropout in an eval-mode export has train=False (in place or not).
    return node.target in (aten.dropout.default, aten.dropout_.default) and not node.args[2]


def normalize(gm: fx.GraphModule) -> None:
    g = gm.graph
    for node in list(g.nodes):
        if node.op == "call_module" and node.target.startswith("_guards"):
            g.erase_node(node)
            continue
        if node.op != "call_function":
            continue
        if node.target in _FUNCTIONAL:
            node.target = _FUNCTIONAL[node.target]
        if _is_identity(node):
            node.replace_all_uses_with(node.args[0])
            g.erase_node(node)
            continue
        if node.target is torch.ops.aten._assert_tensor_metadata.default:
            g.erase_node(node)
            continue
    for node in g.nodes:
        meta.record_source(node)
    for name, _ in list(gm.named_children()):
        if name.startswith("_guards"):
            delattr(gm, name)
    g.eliminate_dead_code()
    gm.recompile()
    canonicalize(gm)


def _strip_pytree_codegen(gm: fx.GraphModule) -> tuple[pytree.TreeSpec, pytree.TreeSpec]:
    info = gm.graph._codegen.pytree_info
    gm.graph._codegen = fx.graph.CodeGen()
    return info.in_spec, info.out_spec


def _is_exported(model: nn.Module) -> bool:
    """A GraphModule that torch.export already produced (e.g. after torchao's prepare/convert_pt2e)."""
    return isinstance(model, fx.GraphModule) and isinstance(model.graph._codegen, fx.graph._PyTreeCodeGen)


def _written_buffers(ep: torch.export.ExportedProgram, gm: fx.GraphModule) -> list[str]:
    """Buffers the forward writes: listed by export's signature, or (as torch 2.13 leaves them in the
    module) in-place ops whose written argument is one of the module's own tensors."""
    found = set(ep.graph_signature.buffers_to_mutate.values())
    for node in gm.graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        for arg, value in zip(schema.arguments, node.args):
            if arg.alias_info is not None and arg.alias_info.is_write and isinstance(value, fx.Node) and value.op == "get_attr":
                found.add(value.target)
    return sorted(found)


def _refuse_state_updates(written: list[str], model: str) -> None:
    """A compiled model is a function of its inputs: a forward that updates its own buffers (a call
    counter, running statistics) has no stateless integer form, and the backends and artifacts would
    each treat the update differently."""
    if written:
        raise UsageError(
            f"{model}.forward updates its buffer(s) {', '.join(written)} in place (e.g. self.{written[0]} += 1); "
            "a compiled model is stateless: keep such state outside the model (pass it in, return the new "
            "value) or leave the update out of the inference forward")


@contextlib.contextmanager
def _cache_off(model: nn.Module):
    """transformers' causal LMs return a KV cache object (DynamicCache) by default, which is no tensor
    tree torch.export can output: captured with `config.use_cache` off (and restored), they return logits
    only. (Decoding with a cache is a separate entry point.)"""
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not True:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


_ADVICE = {
    ("data-dependent", "GuardOnDataDependentSymNode", "Could not guard on data-dependent"):
        "a Python `if` (or int(), .item(), a shape) on a tensor's value: torch.export traces one path. Write "
        "it with torch.where, torch.cond or masking, or move it out of forward",
    ("specialized it to be a constant",):
        "a dimension declared dynamic became a constant: the model's code fixes its size (a view to a "
        "literal shape, a check against a number); dims of size 1 in the example are already traced at 2",
}


def _advice(exc: Exception) -> str:
    text = str(exc)
    hints = [hint for keys, hint in _ADVICE.items() if any(k in text for k in keys)]
    return "".join(f"\nqcompile: this is usually {hint}" for hint in hints)


# Recurrent layers, one op each in the export, unrolled by PyTorch's own decompositions into per-step
# linears (the gate projections, which then quantize like any linear) and the cell's elementwise math.
_RECURRENT = (aten.lstm.input, aten.gru.input, aten.rnn_tanh.input, aten.rnn_relu.input)


def _unrolled_recurrent_layers(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    present = {n.target for n in ep.graph.nodes if n.op == "call_function"} & set(_RECURRENT)
    if not present:
        return ep
    return ep.run_decompositions({op: decomposition_table[op] for op in present})


def _export_examples(model: nn.Module, example_inputs: tuple, dynamic_shapes) -> tuple:
    """The examples torch.export traces. It specializes a dimension of size 1 (and then refuses it as
    dynamic), but a batch of 1 is the example users have: a dimension declared dynamic that has size 1
    is traced on the example repeated to size 2 along it."""
    if dynamic_shapes is None:
        return example_inputs
    if isinstance(dynamic_shapes, dict):
        try:
            bound = inspect.signature(model.forward).bind(*example_inputs).arguments
        except TypeError:
            return example_inputs  # torch.export reports the mismatch itself
        specs = [dynamic_shapes.get(name) for name in bound]
    else:
        specs = list(dynamic_shapes)
    return tuple(_widened(x, spec) for x, spec in zip(example_inputs, specs)) + example_inputs[len(specs):]


def _widened(x, spec):
    axes = spec.items() if isinstance(spec, dict) else enumerate(spec) if isinstance(spec, (list, tuple)) else ()
    for axis, dim in axes:
        if dim is not None and isinstance(x, torch.Tensor) and x.shape[axis] == 1:
            x = torch.cat([x, x], dim=axis)
    return x


def capture(model: nn.Module, example_inputs: tuple, dynamic_shapes=None) -> Captured:
    if _is_exported(model):
        gm = copy.deepcopy(model)  # never modify the user's graph
        in_spec, out_spec = _strip_pytree_codegen(gm)
        normalize(gm)
        record_input_dims(gm, {})
        return Captured(gm, in_spec, out_spec, input_signature(gm))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, tuple):
        raise TypeError(f"example_inputs must be a tuple of tensors, got {type(example_inputs).__name__}")
    was_training = model.training
    model.eval()  # restored below: the user's model is never left modified
    try:
        with _cache_off(model):
            ep = torch.export.export(model, _export_examples(model, example_inputs, dynamic_shapes),
                                     dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {type(exc).__name__}: {exc}{_advice(exc)}"
        ) from exc
    finally:
        model.train(was_training)
    ep = _unrolled_recurrent_layers(ep)
    # The exported module holds the user's own parameters and buffers: copied, so that neither later edits
    # of the float model nor the compiled model's state updates reach the other.
    gm = copy.deepcopy(ep.module())
    _refuse_state_updates(_written_buffers(ep, gm), type(model).__name__)
    in_spec, out_spec = _strip_pytree_codegen(gm)
    normalize(gm)
    record_input_dims(gm, ep.range_constraints)
    return Captured(gm, in_spec, out_spec, input_signature(gm))

