"""Instruments that wrap every pass: print-after, dump-dir, timing, statistics, verify-each, reproducer."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save_file
from torch import fx

from ..ir.dump import DumpWriter
from ..ir.printer import graph_text
from ..ir.verify import verify
from ..serialize import save_graph
from .base import PassContext


@dataclass
class Instruments:
    print_after: frozenset[str] | str = frozenset()  # "all" or pass names
    dump_dir: Path | None = None
    verify_each: bool = False
    reproducer_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    _dump: DumpWriter | None = None

    @classmethod
    def from_env(cls, dump_dir=None, print_after=None, verify_each: bool = False) -> "Instruments":
        """Arguments win; QCOMPILE_DUMP_DIR / QCOMPILE_PRINT_AFTER / QCOMPILE_VERIFY_EACH fill the gaps."""
        dump_dir = dump_dir or os.environ.get("QCOMPILE_DUMP_DIR") or None
        print_after = print_after or os.environ.get("QCOMPILE_PRINT_AFTER", "")
        if isinstance(print_after, str):
            print_after = "all" if print_after.strip() == "all" else frozenset(filter(None, print_after.split(",")))
        verify_each = verify_each or os.environ.get("QCOMPILE_VERIFY_EACH", "") not in ("", "0")
        return cls(print_after=print_after, dump_dir=Path(dump_dir) if dump_dir else None, verify_each=verify_each)

    def start(self, pipeline: str, gm: fx.GraphModule) -> None:
        if self.dump_dir is not None:
            self._dump = DumpWriter(self.dump_dir, pipeline)
            self._dump.write(gm, "input", True, 0.0, "")

    def after(self, name: str, gm: fx.GraphModule, changed: bool, ms: float, stats: dict) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + ms
        if self.verify_each:
            verify(gm)
        if changed and (self.print_after == "all" or name in self.print_after):
            print(f"// ----- after {name} -----", file=sys.stderr)
            print(graph_text(gm), file=sys.stderr)
        if self._dump is not None:
            self._dump.write(gm, name, changed, ms, ", ".join(f"{k}={v}" for k, v in stats.items()))

    def failed(self, name: str, gm_before: fx.GraphModule, pipeline: str, exc: BaseException, ctx: PassContext) -> Path:
        """Write a reproducer: the input graph of the failing pass, the pipeline, the error, and what the pass
        was given (example inputs, calibration batches, the quantization config)."""
        base = self.reproducer_dir or self.dump_dir or os.environ.get("QCOMPILE_REPRO_DIR") or tempfile.mkdtemp(prefix="qcompile-")
        path = Path(base) / f"reproducer-{name}"
        path.mkdir(parents=True, exist_ok=True)
        save_graph(gm_before, path / "graph")
        save_file({f"input_{i}": t.contiguous() for i, t in enumerate(ctx.example_inputs)}, str(path / "inputs.safetensors"))
        save_file({f"batch_{b}_input_{i}": t.contiguous() for b, batch in enumerate(ctx.calibration or [])
                   for i, t in enumerate(batch)}, str(path / "calibration.safetensors"))
        (path / "config.json").write_text(json.dumps(ctx.config.to_json()))
        (path / "pipeline.txt").write_text(pipeline + "\n")
        (path / "error.txt").write_text("".join(traceback.format_exception(exc)))
        (path / "README.txt").write_text(
            f"Pass {name!r} raised. Reproduce with:\n"
            f"  qcompile reproduce {path}\n"
            "which loads graph/ (the graph the pass received) and re-runs the pass with the saved example inputs,\n"
            "calibration batches and quantization config.\n"
        )
        (path / "info.json").write_text(json.dumps({"pass": name, "pipeline": pipeline}))
        return path
