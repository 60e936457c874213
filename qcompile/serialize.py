"""Graph (de)serialization without pickle: JSON for the graph and metadata, safetensors for tensors.

Only ops from an allow-list of namespaces are resolved when loading, so an artifact can never name
arbitrary Python code.
"""
from __future__ import annotations

import hashlib
import json
import keyword
import math
import operator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import fx

from .errors import ArtifactError
from .ir import meta
from .ir.qspec import QParams, QSpec
from .quant import ops  # noqa: F401  (registers torch.ops.qcompile before graphs are loaded)
from .quant.packing import PACKINGS

# 2: constants with packed storage bits (int4) are stored packed (quant/packing.py); 1 is read as well.
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_NAMESPACES = ("aten", "qcompile", "quantized_decomposed")
_PYTHON_TARGETS = {"operator.getitem": operator.getitem}
# Ops that touch the world outside their tensors (files, stdout) although their schemas mutate nothing.
_SIDE_EFFECT_OPS = frozenset({"aten::from_file", "aten::_print"})
_DTYPES = {str(d).replace("torch.", ""): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16,
    torch.int32, torch.int64, torch.bool,
)}


def _target_name(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"{target._schema.name}.{target._overloadname}"
    for name, fn in _PYTHON_TARGETS.items():
        if target is fn:
            return name
    raise ValueError(f"cannot serialize call target {target!r}")


def _resolve_target(name: str):
    if name in _PYTHON_TARGETS:
        return _PYTHON_TARGETS[name]
    qualified, _, overload = name.rpartition(".")
    ns, _, op = qualified.partition("::")
    if ns not in _NAMESPACES or not op:
        raise ArtifactError(f"artifact names op {name!r} outside the allowed namespaces {_NAMESPACES}")
    try:
        target = getattr(getattr(getattr(torch.ops, ns), op), overload)
    except AttributeError as exc:
        raise ArtifactError(f"artifact names unknown op {name!r}") from exc
    # A graph computes tensors from its inputs and constants: an op that writes its arguments (in-place,
    # out=) could overwrite a caller's tensor, and one with side effects could read or write files.
    if target._schema.is_mutable or target._schema.name in _SIDE_EFFECT_OPS:
        raise ArtifactError(f"artifact names op {name!r}, which writes its arguments or has side effects: "
                            "not allowed in a qcompile graph")
    return target


def _identifier(name, what: str) -> str:
    """`name` if it is a plain Python identifier: fx turns node names and targets into the source of the
    module's forward, so anything else could inject code."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("__"):
        raise ArtifactError(f"artifact has an invalid {what} {name!r} (a Python identifier is required)")
    return name


def _enc(a):
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if isinstance(a, bool) or a is None or isinstance(a, (int, str)):
        return a
    if isinstance(a, float):
        return {"float": repr(a)} if not math.isfinite(a) else a
    if isinstance(a, (list, tuple)):
        return {"list" if isinstance(a, list) else "tuple": [_enc(x) for x in a]}
    if isinstance(a, torch.dtype):
        return {"dtype": str(a).replace("torch.", "")}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    if isinstance(a, torch.memory_format):
        return {"memory_format": str(a).replace("torch.", "")}
    if isinstance(a, torch.layout):
        return {"layout": str(a).replace("torch.", "")}
    raise ValueError(f"cannot serialize argument {a!r} of type {type(a).__name__}")


def _dec(a, nodes: dict[str, fx.Node]):
    if not isinstance(a, dict):
        return a
    if len(a) != 1:
        raise ArtifactError(f"malformed argument {a!r}")
    (kind, v), = a.items()
    decoders = {
        "node": lambda v: nodes[v],
        "float": float,
        "list": lambda v: [_dec(x, nodes) for x in v],
        "tuple": lambda v: tuple(_dec(x, nodes) for x in v),
        "dtype": lambda v: _DTYPES[v],
        "device": torch.device,
        "memory_format": lambda v: getattr(torch, v),
        "layout": lambda v: getattr(torch, v),
    }
    if kind not in decoders:
        raise ArtifactError(f"unknown argument kind {kind!r}")
    try:
        return decoders[kind](v)
    except (KeyError, AttributeError, TypeError) as exc:
        raise ArtifactError(f"malformed argument {a!r}") from exc


def _enc_val(v: torch.Tensor) -> dict:
    return {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}


def _dec_val(d: dict) -> torch.Tensor:
    return torch.empty(d["shape"], dtype=_DTYPES[d["dtype"]], device="meta")


def _enc_meta(node: fx.Node, tensors: dict[str, torch.Tensor]) -> dict:
    out = {}
    v = node.meta.get("val")
    if isinstance(v, torch.Tensor):
        out["val"] = _enc_val(v)
    elif isinstance(v, (list, tuple)) and all(isinstance(t, torch.Tensor) for t in v):
        out["vals"] = [_enc_val(t) for t in v]
    if (qp := meta.qparams(node)) is not None:
        key = f"__qparams__.{node.name}"
        tensors[key + ".scale"], tensors[key + ".zero_point"] = qp.scale.clone(), qp.zero_point.clone()
        s = qp.spec
        out["qparams"] = {"key": key, "spec": [s.dtype, s.symmetric, s.axis, s.observer, s.percentile, s.narrow, s.group_size]}
    if (src := meta.source(node)) is not None:
        out["source"] = [src.module_path, src.module_type, src.location, src.code]
    if (layer := meta.layer(node)) is not None:
        out["layer"] = [layer.kind, layer.bits, layer.weight_bytes]
    if (bits := meta.storage_bits(node)) is not None:
        out["storage_bits"] = bits
    for key, getter in (("origin", meta.origin), ("float_reason", meta.float_reason), ("created_by", meta.created_by)):
        if (value := getter(node)) is not None:
            out[key] = value
    return out


def _dec_meta(node: fx.Node, m: dict, tensors: dict[str, torch.Tensor]) -> None:
    if "val" in m:
        node.meta["val"] = _dec_val(m["val"])
    if "vals" in m:
        node.meta["val"] = [_dec_val(d) for d in m["vals"]]
    if "qparams" in m:
        key = m["qparams"]["key"]
        # Specs saved before group_size existed have six fields.
        dtype, sym, axis, obs, pct, narrow, group_size = [*m["qparams"]["spec"], None][:7]
        spec = QSpec(dtype=dtype, symmetric=sym, axis=axis, observer=obs, percentile=pct, narrow=narrow, group_size=group_size)
        meta.set_qparams(node, QParams(tensors[key + ".scale"], tensors[key + ".zero_point"], spec))
    if "source" in m:
        node.meta["qc_source"] = meta.Source(*m["source"])
    if "layer" in m:
        meta.set_layer(node, meta.LayerInfo(*m["layer"]))
    if "storage_bits" in m:
        meta.set_storage_bits(node, m["storage_bits"])
    for key, setter_key in (("origin", "qc_origin"), ("float_reason", "qc_float_reason"), ("created_by", "qc_created_by")):
        if key in m:
            node.meta[setter_key] = m[key]


def _pack(node: fx.Node, originals: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> dict | None:
    """Store a get_attr node's tensor packed where its storage bits have a packing (quant/packing.py); the
    node's entry then records the width and the shape to unpack to."""
    packing = PACKINGS.get(meta.storage_bits(node))
    if packing is None:
        return None
    t = originals[node.target]
    tensors[node.target] = packing.pack(t)
    return {"bits": packing.bits, "shape": list(t.shape)}


def _unpack(entry: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    name, t = entry["target"], tensors[entry["target"]]
    if "packed" not in entry:
        return t
    bits, shape = entry["packed"]["bits"], entry["packed"]["shape"]
    if bits not in PACKINGS:
        raise ArtifactError(f"constant {name!r} is packed at {bits} bits; this qcompile reads {sorted(PACKINGS)}-bit packing")
    try:
        return PACKINGS[bits].unpack(t, tuple(shape))
    except ValueError as exc:
        raise ArtifactError(f"weights.safetensors: packed {bits}-bit constant {name!r} is corrupt: {exc}") from exc


def graph_to_json(gm: fx.GraphModule) -> tuple[dict, dict[str, torch.Tensor]]:
    tensors: dict[str, torch.Tensor] = {}
    for name, t in list(gm.named_buffers()) + list(gm.named_parameters()):
        tensors[name] = t.detach().contiguous().clone()
    originals = dict(tensors)  # a constant read by several get_attr nodes is packed from the original each time
    nodes = []
    for n in gm.graph.nodes:
        entry = {"op": n.op, "name": n.name, "meta": _enc_meta(n, tensors)}
        if n.op == "call_function":
            entry["target"] = _target_name(n.target)
        elif n.op in ("get_attr", "placeholder"):
            entry["target"] = n.target
        elif n.op != "output":
            raise ValueError(f"cannot serialize {n.op} node %{n.name}")
        if n.op == "get_attr" and (packed := _pack(n, originals, tensors)) is not None:
            entry["packed"] = packed
        entry["args"] = _enc(tuple(n.args))
        entry["kwargs"] = {k: _enc(v) for k, v in n.kwargs.items()}
        nodes.append(entry)
    return {"version": FORMAT_VERSION, "nodes": nodes}, tensors


def graph_from_json(doc: dict, tensors: dict[str, torch.Tensor]) -> fx.GraphModule:
    if not isinstance(doc, dict) or doc.get("version") not in _READABLE_VERSIONS or not isinstance(doc.get("nodes"), list):
        raise ArtifactError("graph.json is not a qcompile graph of a supported version")
    root = torch.nn.Module()
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    try:
        for e in doc["nodes"]:
            op = e["op"]
            args = _dec(e["args"], nodes)
            kwargs = {_identifier(k, "keyword argument"): _dec(v, nodes) for k, v in e["kwargs"].items()}
            if op == "placeholder":
                node = graph.placeholder(_identifier(e["target"], "input name"))
            elif op == "get_attr":
                if e["target"] not in tensors:
                    raise ArtifactError(f"weights file lacks tensor {e['target']!r}")
                attr = _identifier(e["target"].replace(".", "__"), "constant name")
                root.register_buffer(attr, _unpack(e, tensors))
                node = graph.get_attr(attr)
            elif op == "call_function":
                node = graph.call_function(_resolve_target(e["target"]), args, kwargs)
            elif op == "output":
                node = graph.output(args[0])
            else:
                raise ArtifactError(f"unknown node kind {op!r}")
            node.name = _identifier(e["name"], "node name")
            _dec_meta(node, e["meta"], tensors)
            nodes[e["name"]] = node
    except ArtifactError:
        raise
    # ValueError: e.g. metadata on the wrong node kind; AttributeError / AssertionError: a field of the wrong
    # type reaching fx (args that are not a tuple, kwargs that are not a mapping)
    # RuntimeError: torch refusing a recorded shape (a negative size)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, AssertionError, RuntimeError) as exc:
        raise ArtifactError(f"graph.json is malformed: {exc!r}") from exc
    gm = fx.GraphModule(root, graph)
    return gm


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_digests(directory: Path, skip: str) -> dict[str, str]:
    """SHA-256 of every file under `directory` but `skip`, by path relative to it."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): _sha256(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != skip}


def check_digests(directory: Path, digests) -> None:
    """Every file `digests` lists is inside `directory` and has its recorded SHA-256: checked before any
    of them is read, so that a truncated, edited or swapped file is an ArtifactError, never a crash."""
    directory = Path(directory).resolve()
    if not isinstance(digests, dict) or not digests:
        raise ArtifactError(f"{directory}/manifest.json lists no file digests")
    for name, digest in digests.items():
        path = (directory / str(name)).resolve()
        if not path.is_relative_to(directory) or not path.is_file():
            raise ArtifactError(f"{directory}: {name!r}, listed in manifest.json, is missing or outside the artifact")
        if _sha256(path) != digest:
            raise ArtifactError(f"{directory}/{name} does not match its SHA-256 in manifest.json: "
                                "the file was edited, truncated or swapped after the artifact was saved")


def save_graph(gm: fx.GraphModule, directory: Path, extra: dict | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    doc, tensors = graph_to_json(gm)
    if extra:
        doc["extra"] = extra
    (directory / "graph.json").write_text(json.dumps(doc))
    save_file(tensors, str(directory / "weights.safetensors"))


def load_graph(directory: Path) -> tuple[fx.GraphModule, dict]:
    directory = Path(directory)
    try:
        doc = json.loads((directory / "graph.json").read_text())
        tensors = load_file(str(directory / "weights.safetensors"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{directory} is not a qcompile artifact: missing {Path(exc.filename).name}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{directory}/graph.json is not valid JSON: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error types on corrupt files
        raise ArtifactError(f"{directory}/weights.safetensors is corrupt: {exc}") from exc
    return graph_from_json(doc, tensors), doc.get("extra", {})
