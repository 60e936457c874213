"""Checking tensors against the inputs a captured graph accepts (its signature, capture.input_signature):
calls of a compiled model and calibration batches both go through here, so that bad data is the user's
clear error (naming the batch, the input and the expected shape), never a fault deep inside a pass.

A signature entry: {"name": placeholder name, "shape": [int or None (free)], "dtype": str,
"free": [[axis, symbol, min, max (None: unbounded)], ...]}. Artifacts saved before "name" and "free"
existed have neither.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from ..errors import UsageError
from ..ir import shapes
from ..quant.math import check_finite

Signature = list[dict]  # with "index_bound": rows of the embedding table an input indexes, if it does


def describe(entry: dict) -> str:
    dims = ", ".join("*" if d is None else str(d) for d in entry["shape"])
    return f"{entry['dtype']}[{dims}]"


def describe_all(signature: Signature) -> str:
    return ", ".join(f"{s['name']}: {describe(s)}" if s.get("name") else describe(s) for s in signature)


def label(i: int, entry: dict) -> str:
    return f"input {i} ({entry['name']})" if entry.get("name") else f"input {i}"


def _of(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


def shape_fits(shape: list[int], entry: dict, skip_axis: int | None = None) -> bool:
    want = entry["shape"]
    return len(shape) == len(want) and all(
        w is None or w == d for axis, (d, w) in enumerate(zip(shape, want)) if axis != skip_axis)


def check_tensor(t, entry: dict, where: str) -> None:
    """TypeError/ValueError unless `t` is a tensor of the entry's dtype and shape (free dims: any size)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: expected a tensor {describe(entry)}, got {type(t).__name__}")
    if _of(t)["dtype"] != entry["dtype"] or not shape_fits(list(t.shape), entry):
        raise ValueError(f"{where}: expected {describe(entry)}, got {describe(_of(t))}")


def check_free_dims(flat: list[torch.Tensor], signature: Signature, prefix: str = "") -> None:
    """Sizes of free dims within the ranges declared in dynamic_shapes, and equal where they share a symbol:
    what torch.export's own guards check, and what a compiled backend relies on."""
    seen: dict[str, tuple[int, int, int]] = {}
    for i, (t, w) in enumerate(zip(flat, signature)):
        for axis, expr, lo, hi in w.get("free", []):
            size = t.shape[axis]
            if size < lo or (hi is not None and size > hi):
                raise ValueError(f"{prefix}{label(i, w)}: dimension {axis} is {size}, outside the range "
                                 f"[{lo}, {'inf' if hi is None else hi}] declared in dynamic_shapes")
            j, other_axis, other = seen.setdefault(expr, (i, axis, size))
            if other != size:
                raise ValueError(f"{prefix}{label(i, w)}: dimension {axis} is {size} but input {j} dimension "
                                 f"{other_axis} is {other}; dynamic_shapes declares them the same size")


def check_count(flat: list, signature: Signature, prefix: str = "", error: type[Exception] = TypeError) -> None:
    if len(flat) != len(signature):
        raise error(f"{prefix}expected {len(signature)} input tensor(s) ({describe_all(signature)}), got {len(flat)}")


def check_indices(flat: list[torch.Tensor], signature: Signature, prefix: str = "") -> None:
    """Inputs that index an embedding table stay inside it (a compiled gather does not check)."""
    for i, (t, w) in enumerate(zip(flat, signature)):
        rows = w.get("index_bound")
        if rows is not None and t.numel() and (int(t.min()) < 0 or int(t.max()) >= rows):
            bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
            raise ValueError(f"{prefix}{label(i, w)} holds the index {bad}, outside the embedding table's {rows} rows")


def _has_nan(t: torch.Tensor) -> bool:
    """Whether `t` holds a NaN, without waking torch's OpenMP pool: its threads spin for a while after a
    parallel op and take the cores from the compiled model's own pool (MobileNetV2 on x86, 2 threads: 8 ms
    per call after torch.isnan(x).any(), 3.3 ms without). numpy's min is single-threaded and NaN wins it."""
    if t.dtype in _NUMPY_FLOATS and t.device.type == "cpu":
        return bool(np.isnan(t.detach().numpy().min())) if t.numel() else False
    return bool(torch.isnan(t).any())


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def check_no_nan(flat: list[torch.Tensor], signature: Signature, prefix: str = "") -> None:
    """NaN has no integer code: quantizing it would give a finite, meaningless result."""
    for i, (t, w) in enumerate(zip(flat, signature)):
        if t.is_floating_point() and _has_nan(t):
            raise ValueError(f"{prefix}{label(i, w)} contains NaN, which a quantized model cannot represent")


def calibration_batches(calibration, signature: Signature, gm: fx.GraphModule | None = None) -> list[tuple[torch.Tensor, ...]]:
    """The calibration data as batches the captured graph accepts.

    Each batch is a tensor or a tuple/list of the model's positional inputs. The captured graph is only
    known to be valid at the example's static shapes (a `view(batch, -1)` in it holds the example's
    batch), so a batch of another size (dim 0) is split into example-sized pieces when its size is a
    multiple of the example's (min/max statistics do not depend on how samples are batched); else it
    runs whole if the graph `gm` computes at its size with every batch-sized output scaling along (checked
    on fake tensors). Anything else is a UsageError naming the batch, the input and the shape expected.
    """
    if isinstance(calibration, torch.Tensor):
        raise UsageError("calibration is one tensor; pass a list of batches: calibration=[x] for one batch, "
                         "or list(x.split(4)) for batches of 4")
    try:
        batches = list(calibration)
    except TypeError:
        raise UsageError(f"calibration must be an iterable of batches, got {type(calibration).__name__}") from None
    out = []
    for b, batch in enumerate(batches):
        tensors = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
        for piece in _pieces(tensors, signature, gm, f"calibration batch {b}, "):
            _as_usage_error(check_free_dims, list(piece), signature, f"calibration batch {b}, ")
            _as_usage_error(check_indices, list(piece), signature, f"calibration batch {b}, ")
            for i, (t, w) in enumerate(zip(piece, signature)):
                check_finite(t, f"calibration batch {b}, {label(i, w)}")
            out.append(piece)
    return out


def _pieces(tensors: tuple, signature: Signature, gm: fx.GraphModule | None, prefix: str) -> list[tuple]:
    check_count(list(tensors), signature, prefix, UsageError)
    for i, (t, w) in enumerate(zip(tensors, signature)):
        if not isinstance(t, torch.Tensor):
            raise UsageError(f"{prefix}{label(i, w)}: expected a tensor {describe(w)}, got {type(t).__name__}")
        if _of(t)["dtype"] != w["dtype"] or not shape_fits(list(t.shape), w, skip_axis=0):
            raise UsageError(f"{prefix}{label(i, w)}: expected {describe(w)}, got {describe(_of(t))}")
    if all(shape_fits(list(t.shape), w) for t, w in zip(tensors, signature)):
        return [tensors]
    batched = [(i, t, w) for i, (t, w) in enumerate(zip(tensors, signature)) if t.dim()]
    free = [label(i, w) for i, t, w in batched if w["shape"][0] is None]
    if free:
        raise UsageError(f"{prefix}cannot match the batch to the example: {', '.join(free)} has a free dimension 0 "
                         "where other inputs have the example's")
    factors = {t.shape[0] / w["shape"][0] for _, t, w in batched}
    if len(factors) > 1:
        raise UsageError(f"{prefix}the inputs have different batch sizes: " + ", ".join(
            f"{label(i, w)} has {t.shape[0]} (example: {w['shape'][0]})" for i, t, w in batched))
    factor = factors.pop()
    if factor.is_integer():
        return [tuple(t.narrow(0, j * w["shape"][0], w["shape"][0]) if t.dim() else t
                      for t, w in zip(tensors, signature)) for j in range(int(factor))]
    i, t, w = batched[0]
    if gm is not None and _scales_with_batch(gm, tensors, signature, w["shape"][0]):
        return [tensors]
    raise UsageError(
        f"{prefix}{label(i, w)}: expected {describe(w)}, got {describe(_of(t))}: the graph was captured for a "
        f"batch of {w['shape'][0]} (example_inputs) and does not run at {t.shape[0]}, which is not a multiple of "
        f"it. Give batches of a multiple of {w['shape'][0]}, or compile with "
        "dynamic_shapes={...: {0: torch.export.Dim('batch')}} to keep the batch free")


def _scales_with_batch(gm: fx.GraphModule, tensors: tuple, signature: Signature, example_batch: int) -> bool:
    """Whether the graph runs at this batch size, every output of the example's batch size following it."""
    batch = next(t.shape[0] for t in tensors if t.dim())
    at_example = shapes.output_shapes(gm, [([example_batch, *t.shape[1:]] if t.dim() else [], t.dtype) for t in tensors])
    at_batch = shapes.output_shapes(gm, [(list(t.shape), t.dtype) for t in tensors])
    if at_example is None or at_batch is None or len(at_example) != len(at_batch):
        return False
    return all(b[1:] == e[1:] and b[:1] == ([batch] if e[:1] == [example_batch] else e[:1])
               for e, b in zip(at_example, at_batch))


def _as_usage_error(check, *args) -> None:
    try:
        check(*args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
