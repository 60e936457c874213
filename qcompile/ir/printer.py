"""Readable graph text: one line per node with op, arguments, dtype/shape, quantization and source."""
from __future__ import annotations

import torch
from torch import fx

from . import meta, shapes


def target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_function":
        name = getattr(t, "__name__", str(t))
        if hasattr(t, "_schema"):
            ns = t._schema.name.split("::")[0]
            return f"{ns}.{t._schema.name.split('::')[1]}" + (f".{t._overloadname}" if t._overloadname != "default" else "")
        return name
    return str(t)


def _fmt_arg(a) -> str:
    if isinstance(a, fx.Node):
        return f"%{a.name}"
    if isinstance(a, (list, tuple)):
        inner = ", ".join(_fmt_arg(x) for x in a)
        return f"[{inner}]"
    if isinstance(a, float):
        return f"{a:.6g}"
    if isinstance(a, torch.dtype):
        return str(a).replace("torch.", "")
    return repr(a)


def type_str(node: fx.Node) -> str:
    v = shapes.val(node)
    if isinstance(v, torch.Tensor):
        return f"{str(v.dtype).replace('torch.', '')}{list(v.shape)}"
    if isinstance(v, list):
        return "(" + ", ".join(f"{str(x.dtype).replace('torch.', '')}{list(x.shape)}" for x in v) + ")"
    return ""


def node_line(node: fx.Node) -> str:
    parts = []
    if node.op == "call_function":
        args = ", ".join([_fmt_arg(a) for a in node.args] + [f"{k}={_fmt_arg(v)}" for k, v in node.kwargs.items()])
        parts.append(f"%{node.name} = {target_name(node)}({args})")
    elif node.op == "get_attr":
        parts.append(f"%{node.name} = get_attr {node.target}")
    elif node.op == "output":
        parts.append(f"return {_fmt_arg(node.args[0])}")
    else:
        parts.append(f"%{node.name} = {node.op} {node.target}")
    t = type_str(node)
    if t:
        parts.append(f": {t}")
    notes = []
    if (qp := meta.qparams(node)) is not None:
        notes.append(f"q={qp.describe()}")
    elif (spec := meta.qspec(node)) is not None:
        notes.append(f"qspec={spec.describe()}")
    if (layer := meta.layer(node)) is not None:
        notes.append(f"bits={layer.bits}")
    if (fused := meta.fused_into(node)) is not None:
        notes.append(f"fused-into=%{fused}")
    if (reason := meta.float_reason(node)) is not None:
        notes.append(f"float: {reason}")
    if (src := meta.source(node)) is not None:
        notes.append(f"src={src.short()}")
    if notes:
        parts.append("  # " + "; ".join(notes))
    return " ".join(parts)


def graph_text(gm: fx.GraphModule, hide_constants: bool = True) -> str:
    """The graph as text; get_attr constants are folded into their users' argument lists by default."""
    lines = [node_line(n) for n in gm.graph.nodes if not (hide_constants and n.op == "get_attr")]
    return "\n".join(lines) + "\n"
