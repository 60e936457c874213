"""`compile(..., target="x86", tune=True)`: per kernel, time a few schedules and keep the fastest; the
decisions go to a JSON file on disk, and the next tuned compile reuses them without measuring.

TVM 0.27's meta-schedule cannot be used with this wheel: `tvm.ir.save_json` of any IRModule holding a
PrimFunc segfaults (ffi::ToJSONGraph), and its database, task scheduler and default mutators serialise
modules. The search space here is qcompile's own schedules, whose knobs change only the loop structure,
so tuned results stay bit-exact:
- fused TE kernels (fused_kernel_rule.FusedIntegerKernel): `Knobs` (vector width, register tile rows, pad
  inlined or materialised), searched one knob at a time from the untuned defaults (coordinate descent);
- GEMM kernels (gemm_kernel.py): the register `Tiling`, the cost model's best few.

A workload is keyed by the target and the kernel: the structural hash of the unscheduled PrimFunc (for a
GEMM, its ISA, sizes and output type, which is what its tile depends on). Each candidate is built on its
own and timed with time_evaluator on zero inputs (which cannot send an index out of range or divide by
zero). Kernels with sizes free at run time (dynamic_shapes) keep the untuned schedule.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx

from ....errors import UsageError
from .fused_kernel_rule import FusedIntegerKernel, Knobs
from .gemm_kernel import gemm_prim_func
from .gemm_lowering import GemmShape, default_tiling
from .tiling import Tiling, ranked_tilings

FORMAT = 1  # records written in another format are ignored (those kernels are tuned again)
DEFAULT_TRIALS = 6  # measured schedules per kernel (about 85 s for MobileNetV2's 79 kernels on 2 cores)

# The values each knob may take; the search tries them in this order, the default first and the least
# promising last, which a small budget cuts: on MobileNetV2 (8 trials) wider vectors and 8-channel tiles
# won often, materialised padding and 2- or 1-channel tiles never.
KNOB_VALUES = {"vector": (16, 32, 64, 8), "inline_pad": (True, False), "channels": (4, 8, 2, 1)}

# A candidate replaces the current best only when it is this much faster: closer timings are noise on a
# shared machine, and the default schedule is the better-understood one.
_MARGIN = 0.03
_REPEATS = 5
_MIN_REPEAT_MS = 10  # time_evaluator repeats a short kernel until one repeat lasts this long


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class TuneOptions:
    trials: int  # at most this many schedules measured per kernel
    cache: Path  # directory of the records files, one per target


def default_cache() -> Path:
    """$QCOMPILE_CACHE/tuning, else ~/.cache/qcompile/tuning."""
    root = os.environ.get("QCOMPILE_CACHE")
    return Path(root) / "tuning" if root else Path.home() / ".cache" / "qcompile" / "tuning"


def options(tune, trials, cache) -> TuneOptions | None:
    """The checked tuning options of compile() (None: no tuning, and the records are never read)."""
    if not isinstance(tune, bool):
        raise UsageError(f"tune must be True or False, got {tune!r}")
    if not tune:
        if trials is not None or cache is not None:
            raise UsageError("tune_trials and tune_cache are options of tuning: pass tune=True too")
        return None
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 1):
        raise UsageError(f"tune_trials must be a positive int (schedules measured per kernel), got {trials!r}")
    if cache is not None and not isinstance(cache, (str, os.PathLike)):
        raise UsageError(f"tune_cache must be a directory path, got {cache!r}")
    directory = Path(cache) if cache is not None else default_cache()
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"tune_cache must be a directory, and {directory} is a file")
    return TuneOptions(trials or DEFAULT_TRIALS, directory)


# ---------------------------------------------------------------- records on disk
class Records:
    """One target's decisions, workload key -> record, in one JSON file."""

    def __init__(self, path: Path, target: str):
        self.path, self.target = path, target
        self._new: dict[str, dict] = {}  # decided by this compile: merged into the file on every save
        self._known = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            warnings.warn(f"ignoring unreadable tuning records {self.path} ({exc}); tuning again", stacklevel=2)
            return {}
        return data.get("records", {}) if data.get("format") == FORMAT else {}

    def get(self, key: str) -> dict | None:
        return self._known.get(key)

    def put(self, key: str, record: dict) -> None:
        """Store and save at once, so that an interrupted tuning run keeps what it measured."""
        self._known[key] = self._new[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Merged with the file as it is now (another compile may have added records meanwhile), written
        # to a temporary file and renamed: a reader never sees half a file.
        merged = {**self._read(), **self._new}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.stem, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"format": FORMAT, "target": self.target, "records": merged}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- measuring one kernel
def _shapes(func: tirx.PrimFunc, sizes: dict[str, int]) -> list[tuple[list[int], str]] | None:
    """(shape, dtype) of every parameter, free dims taken from `sizes`; None if one is not a static buffer."""
    out = []
    for param in func.params:
        if not isinstance(param.ty, tirx.BufferType):  # a scalar (a size passed on its own)
            return None
        dims = [int(d) if isinstance(d, tirx.IntImm) else sizes.get(getattr(d, "name", None)) for d in param.shape]
        if None in dims:
            return None
        out.append((dims, str(param.dtype)))
    return out


def measure(func: tirx.PrimFunc, target: tvm.target.Target, sizes: dict[str, int]) -> float:
    """Median µs of one call of a scheduled PrimFunc, built on its own for `target`, on zero inputs."""
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target).jit()
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(np.zeros(shape, dtype), dev) for shape, dtype in _shapes(func, sizes)]
    timer = lib.time_evaluator("main", dev, number=1, repeat=_REPEATS, min_repeat_ms=_MIN_REPEAT_MS)
    return timer(*args).median * 1e6


@dataclass(frozen=True)
class Decision:
    choice: dict  # the Knobs or Tiling fields
    us: float | None  # the choice's time; None when no schedule differed, so nothing was measured
    default_us: float | None
    trials: int


def _scheduled(func: tirx.PrimFunc, knobs: Knobs, target: tvm.target.Target) -> tirx.PrimFunc:
    sch = FusedIntegerKernel(knobs).apply(func, target, False)
    return func if sch is None else sch.mod["main"]


def _search_knobs(func: tirx.PrimFunc, target: tvm.target.Target, trials: int) -> Decision:
    """Coordinate descent from the default Knobs: each knob in turn takes the fastest of its values with the
    others at the best so far. Knob settings that schedule to the same loops are measured once."""
    times: dict[int, float] = {}  # structural hash of the scheduled function -> µs

    def timed(knobs: Knobs) -> float | None:
        scheduled = _scheduled(func, knobs, target)
        key = tvm_ffi.structural_hash(scheduled)
        if key not in times:
            if len(times) == trials:
                return None
            times[key] = measure(scheduled, target, {})
        return times[key]

    best = Knobs()
    # A kernel the knobs do not change (element-wise with one width, a float island) is not timed at all.
    variants = {tvm_ffi.structural_hash(_scheduled(func, dataclasses.replace(best, **{name: v}), target))
                for name, values in KNOB_VALUES.items() for v in values}
    if len(variants) == 1:
        return Decision(dataclasses.asdict(best), None, None, 0)
    best_us = default_us = timed(best)
    for name, values in KNOB_VALUES.items():
        base = best
        for value in values:
            knobs = dataclasses.replace(base, **{name: value})
            us = timed(knobs)
            if us is not None and us < best_us * (1 - _MARGIN):
                best, best_us = knobs, us
    return Decision(dataclasses.asdict(best), best_us, default_us, len(times))


def _search_tiling(shape: GemmShape, target: tvm.target.Target, trials: int) -> Decision:
    """The cost model's pick and its runners-up, each timed; the fastest wins."""
    tilings = ranked_tilings(shape.isa, shape.m, shape.n, shape.k, trials)
    times = [measure(gemm_prim_func(shape.n, shape.k, shape.requant, shape.isa, t, shape.weights), target, {"M": shape.m})
             for t in tilings]
    best = 0
    for i, us in enumerate(times):
        if us < times[best] * (1 - _MARGIN):
            best = i
    return Decision(dataclasses.asdict(tilings[best]), times[best], times[0], len(tilings))


# ---------------------------------------------------------------- the tuner of one build
class _ChosenKnobs(FusedIntegerKernel):
    """FusedIntegerKernel with each kernel's own knobs (looked up by the kernel's structural hash)."""

    def __init__(self, chosen: dict[int, Knobs]):
        super().__init__()
        self.chosen = chosen

    def knobs_for(self, func: tirx.PrimFunc) -> Knobs:
        return self.chosen.get(tvm_ffi.structural_hash(func), self.knobs)


def _unscheduled(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and not (func.attrs is not None and "tirx.is_scheduled" in func.attrs)


class Tuner:
    """Decisions for one build: read from the records, or measured now (and then written to them)."""

    def __init__(self, target: tvm.target.Target, opts: TuneOptions):
        self.target, self.trials = target, opts.trials
        name = str(target)
        self.records = Records(opts.cache / f"{hashlib.sha256(name.encode()).hexdigest()[:16]}.json", name)
        self.tuned = self.reused = 0
        self.seconds = 0.0

    def _key(self, kind: str, workload: str) -> str:
        return hashlib.sha256(f"{self.target}|{kind}|{workload}".encode()).hexdigest()[:24]

    def _decide(self, key: str, kind: str, search: Callable[[], Decision]) -> dict:
        record = self.records.get(key)
        if record is not None:
            self.reused += 1
            return record["choice"]
        start = time.perf_counter()
        decision = search()
        self.seconds += time.perf_counter() - start
        self.tuned += 1
        self.records.put(key, {"kind": kind, **dataclasses.asdict(decision)})
        return decision.choice

    def tiling(self, shape: GemmShape) -> Tiling:
        """gemm_lowering's ChooseTiling: the fastest measured tile (the cost model's for free M)."""
        if shape.m is None:
            return default_tiling(shape)
        out = shape.requant.out_dtype if shape.requant else "int32"
        # Records of int8 weights keep their keys from before int4 existed.
        weights = "" if shape.weights.bits == 8 else f" weights={shape.weights.name}"
        workload = f"{shape.isa.name} m={shape.m} n={shape.n} k={shape.k} out={out}{weights}"
        return Tiling(**self._decide(self._key("gemm", workload), "gemm",
                                     lambda: _search_tiling(shape, self.target, self.trials)))

    def knobs(self, func: tirx.PrimFunc) -> Knobs:
        if _shapes(func, {}) is None:
            return Knobs()
        # The hash ignores variable and buffer names but not the attributes: the kernel's own name goes.
        workload = str(tvm_ffi.structural_hash(func.with_attr("global_symbol", "main")))
        return Knobs(**self._decide(self._key("fused", workload), "fused",
                                    lambda: _search_knobs(func, self.target, self.trials)))

    def rule(self, mod: tvm.IRModule) -> FusedIntegerKernel:
        """The schedule rule for the fused kernels of `mod`, every one of them decided first."""
        return _ChosenKnobs({tvm_ffi.structural_hash(f): self.knobs(f) for _, f in mod.functions_items() if _unscheduled(f)})

    def summary(self) -> dict:
        return {"tuned": self.tuned, "reused": self.reused, "seconds": round(self.seconds, 2),
                "records": str(self.records.path)}
