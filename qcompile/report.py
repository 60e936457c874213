"""cm.report(): a per-layer table of what was quantized, how, how accurately, and what stayed float."""
from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import fx

from .debug import per_node_sqnr
from .errors import UsageError
from .ir import meta
from .ir.printer import target_name
from .quant.coverage import describe_float
from .quant.packing import PACKINGS, stored_size

BIT_ALLOCATION = "bit_allocation"  # report.extra key written by choose-bitwidth


@dataclass
class LayerRow:
    name: str
    op: str
    bits: str  # "8", "32" (accumulator), "float"
    scale: str
    sqnr_db: float | None
    weight_bytes: int
    source: str
    note: str = ""
    time_us: float | None = None  # measured on the compiled model (x86): its kernels' share of one run


@dataclass
class Report:
    rows: list[LayerRow]
    weight_bytes: int  # bytes of every constant the compiled graph stores
    float_bytes: int  # bytes of the original model's parameters and buffers (fp32)
    backend: str = "reference"
    extra: dict = field(default_factory=dict)

    @property
    def compression(self) -> float:
        return self.float_bytes / self.weight_bytes if self.weight_bytes else math.inf

    @property
    def float_layers(self) -> list[LayerRow]:
        return [r for r in self.rows if r.bits == "float"]

    @property
    def kernels(self) -> list[dict]:
        """Every kernel call of one run: {"kernel", "layers", "us"}; empty until profiled."""
        return self.extra.get("kernels", [])

    @property
    def bit_allocation(self) -> dict | None:
        """What choose-bitwidth measured and chose (bits="mixed"): per layer its sensitivity at each width,
        the width chosen and its weight bytes; None when widths were not chosen."""
        return self.extra.get(BIT_ALLOCATION)

    def plot(self, path) -> Path:
        """A PNG of each layer's sensitivity and chosen width (bits="mixed")."""
        if self.bit_allocation is None:
            raise UsageError('the report has no bit allocation to plot: compile with bits="mixed", budget=...')
        from .report_plot import (
            plot_bit_allocation,  # matplotlib loads only when a plot is asked for
        )

        return plot_bit_allocation(self.bit_allocation, Path(path))

    def add_profile(self, kernels: list[dict]) -> None:
        """Record kernel times; a kernel computing several layers counts a share for each."""
        self.extra["kernels"] = kernels
        rows = {r.name: r for r in self.rows}
        for r in self.rows:
            r.time_us = None
        for k in kernels:
            mine = [rows[name] for name in k["layers"] if name in rows]
            for r in mine:
                r.time_us = (r.time_us or 0.0) + k["us"] / len(mine)

    def to_json(self) -> dict:
        return {
            "rows": [asdict(r) for r in self.rows], "weight_bytes": self.weight_bytes,
            "float_bytes": self.float_bytes, "backend": self.backend, "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Report":
        return cls([LayerRow(**r) for r in d["rows"]], d["weight_bytes"], d["float_bytes"], d["backend"], d.get("extra", {}))

    def table(self) -> Table:
        t = Table(title=f"qcompile report ({self.backend})", show_lines=False)
        for col in ("layer", "op", "bits", "scale", "SQNR dB", "bytes", "µs", "source", "note"):
            t.add_column(col, overflow="fold")
        for r in self.rows:
            sq = "" if r.sqnr_db is None else ("inf" if math.isinf(r.sqnr_db) else f"{r.sqnr_db:.1f}")
            us = "" if r.time_us is None else f"{r.time_us:.1f}"
            t.add_row(r.name, r.op, r.bits, r.scale, sq, str(r.weight_bytes or ""), us, r.source, r.note)
        return t

    def kernel_table(self) -> Table:
        """The profiled kernels, slowest first, with their share of the summed kernel time."""
        total = sum(k["us"] for k in self.kernels) or 1.0
        t = Table(title="kernels (one run, median µs per call)")
        for col in ("kernel", "layers", "µs", "share"):
            t.add_column(col, overflow="fold")
        for k in sorted(self.kernels, key=lambda k: -k["us"]):
            t.add_row(k["kernel"], ", ".join(k["layers"]) or "(layout / unattributed)", f"{k['us']:.1f}", f"{100 * k['us'] / total:.1f}%")
        return t

    def allocation_table(self) -> Table:
        alloc = self.bit_allocation
        widths = list(alloc["layers"][0]["sensitivity"]) if alloc["layers"] else []
        t = Table(title=f"bit allocation ({alloc['metric']} sensitivity; {alloc['avg_bits']:.2f} bits per weight on average)")
        for col in ("layer", "module", "params", *(f"{alloc['metric']} @{w}b" for w in widths), "bits", "bytes"):
            t.add_column(col, overflow="fold")
        for r in alloc["layers"]:
            sens = [f"{r['sensitivity'][w]:.2e}" for w in widths]
            t.add_row(r["layer"], r["module"], f"{r['params']:,}", *sens, str(r["bits"]), f"{r['bytes']:,}")
        return t

    def __str__(self) -> str:
        console = Console(width=180, record=True, file=io.StringIO())
        console.print(self.table())
        if self.bit_allocation is not None:
            console.print(self.allocation_table())
        if self.kernels:
            console.print(self.kernel_table())
        summary = (
            f"weights: {self.weight_bytes:,} bytes stored vs {self.float_bytes:,} bytes fp32 "
            f"({self.compression:.2f}x smaller); {len(self.float_layers)} op(s) left in float"
        )
        moves = self.extra.get("data_movement")
        if moves:
            summary += " (and data movement: " + ", ".join(f"{op} x{n}" for op, n in sorted(moves.items())) + ")"
        if self.kernels:
            summary += f"; {len(self.kernels)} kernel calls, {sum(k['us'] for k in self.kernels):,.0f} µs in all"
        return console.export_text() + summary + "\n" + self.coverage_line()

    def coverage_line(self) -> str:
        """'coverage: 98.7% of the model's 3,504,872 weights stored as integers; ...' (empty for old artifacts)."""
        cov = self.extra.get("coverage")
        if not cov:
            return ""
        share = 1 - cov["float_weights"] / max(cov["weights"], 1)
        line = f"coverage: {share:.1%} of the model's {cov['weights']:,} weights stored as integers"
        if cov["float_layers"]:
            line += "; weighted layers in float: " + describe_float(cov["float_layers"])
        return line + "\n"

    def __repr__(self) -> str:
        return f"Report({len(self.rows)} rows, weight_bytes={self.weight_bytes}, float_bytes={self.float_bytes})"


def stored_bytes(gm: fx.GraphModule) -> int:
    """Bytes of the graph's constants as the artifact stores them: packed ones at their storage bits."""
    packed = {n.target: meta.storage_bits(n) for n in gm.graph.nodes
              if n.op == "get_attr" and meta.storage_bits(n) in PACKINGS}
    tensors = list(gm.named_buffers()) + list(gm.named_parameters())
    return sum(stored_size(t.numel(), packed.get(name, 8 * t.element_size())) for name, t in tensors)


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))


def _is_layer(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if meta.float_reason(node) is not None or meta.layer(node) is not None:
        return True
    v = node.meta.get("val")
    return meta.qparams(node) is not None and meta.origin(node) is not None and getattr(v, "dtype", None) in (torch.int8, torch.uint8)


# Ops that move or make data without arithmetic: float or not, they are no layer of the report (they are
# counted on the summary line instead, so a table of real layers is not drowned in them).
DATA_MOVEMENT = frozenset({
    "getitem", "_to_copy", "to", "unbind", "split", "split_with_sizes", "chunk", "zeros", "ones", "full", "arange",
    "zeros_like", "ones_like", "full_like", "new_zeros", "new_ones", "scalar_tensor", "alias", "expand", "repeat",
    "stack", "cat", "slice", "select", "view", "reshape", "permute", "transpose", "t", "clone", "contiguous",
    "squeeze", "unsqueeze", "flatten", "index_select", "gather", "detach", "lift_fresh_copy", "sym_size",
})


def _op_name(node: fx.Node) -> str:
    name = target_name(node)
    return name.split(".")[1] if "." in name else name


def build_report(gm: fx.GraphModule, float_gm: fx.GraphModule | None, inputs: tuple, float_bytes: int, backend: str) -> Report:
    sqnr = per_node_sqnr(float_gm, gm, inputs) if float_gm is not None else {}
    rows, moves = [], Counter()
    for node in gm.graph.nodes:
        if not _is_layer(node):
            continue
        if meta.layer(node) is None and _op_name(node) in DATA_MOVEMENT:
            moves[_op_name(node)] += 1
            continue
        src = meta.source(node)
        layer = meta.layer(node)
        reason = meta.float_reason(node)
        qp = meta.qparams(node)
        rows.append(LayerRow(
            name=meta.origin(node) or node.name,
            op=layer.kind if layer else _op_name(node),
            bits="float" if reason else str(layer.bits if layer else qp.spec.bits),
            scale=qp.describe() if qp is not None else ("float out" if layer else ""),
            sqnr_db=sqnr.get(node.name),
            weight_bytes=layer.weight_bytes if layer else 0,
            source=src.short() if src else "",
            note=reason or "",
        ))
    return Report(rows, stored_bytes(gm), float_bytes, backend, {"data_movement": dict(moves)})
