"""`target="x86"`: the integer graph built with TVM + LLVM for the host CPU, with hand-written schedules
(tuned per kernel with tune=True: tuning.py)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import tvm
from torch import fx
from tvm import relax
from tvm.s_tir import dlight

from . import float_yardstick, profile, tuning, x86_gemm
from .gemm_lowering import default_tiling
from .lower import to_relax
from .schedule_cpu import FusedIntegerKernel

LIBRARY = "model.so"
KERNELS = "kernels.json"  # the library's kernel calls and the layers each computes, for the profile

# TVM's CPU thread pool defaults to half the logical CPUs (one thread on a 2-vCPU machine); use them all
# unless the user chose. Read when the pool starts, i.e. at the first parallel call, after this import.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def host_target() -> tvm.target.Target:
    """LLVM for this machine's CPU (detected, never hard-coded), on all its cores."""
    return tvm.target.Target(x86_gemm.host_target())


def group(mod: tvm.IRModule) -> tuple[tvm.IRModule, tvm.IRModule]:
    """Group each accumulator with its epilogue (bias, requantize, residual add) into one Relax function.
    Returns the module before and after grouping: the profile reads kernels' layers from the pair."""
    before = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),  # float islands arrive as high-level Relax ops
        # Reshapes become views before fusion: fused into a neighbour (two GEMMs' row/NHWC reshapes, a
        # residual add's) they would be copies.
        relax.transform.RewriteDataflowReshape(),
        relax.transform.AnnotateTIROpPattern(),
    ])(mod)
    return before, relax.transform.FuseOps()(before)


def schedule(grouped: tvm.IRModule, target: tvm.target.Target, tuner: tuning.Tuner | None = None) -> tvm.IRModule:
    """Turn each group into one kernel and schedule every kernel (with the tuner's knobs, if tuning)."""
    mod = tvm.transform.Sequential([relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()])(grouped)
    rule = tuner.rule(mod) if tuner else FusedIntegerKernel()
    with target:
        return dlight.ApplyDefaultSchedule(rule)(mod)


def optimize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    return schedule(group(mod)[1], target)


class TVMRunner:
    """Calls a built Relax VM function with torch tensors (zero-copy through DLPack)."""

    def __init__(self, executable, sites: list[profile.CallSite], device=None, tuning: dict | None = None):
        self.executable = executable
        self.sites = sites
        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)
        self.tuning = tuning  # with tune=True: kernels measured / reused from the records, seconds, records file

    def __call__(self, *inputs: torch.Tensor):
        args = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
        return tuple(torch.from_dlpack(o) for o in self.vm["main"](*args))

    def profile(self, *inputs: torch.Tensor) -> list[dict]:
        """Median µs of every kernel call of one run, with the layers each computes (see profile.py)."""
        return profile.profile(self.vm, self.sites, list(inputs))

    def benchmark(self, *inputs: torch.Tensor, number: int, repeat: int) -> profile.BenchmarkResult:
        args = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
        return profile.time_vm(self.vm, self.device, args, number=number, repeat=repeat, where="this host's CPU")

    def save(self, directory: Path) -> None:
        self.executable.export_library(str(Path(directory) / LIBRARY))
        profile.save_sites(self.sites, Path(directory) / KERNELS)


class X86Backend:
    name = "x86"
    supports_dynamic_shapes = True  # dims that torch.export leaves free stay symbolic in the module

    def __init__(self, target: tvm.target.Target | None = None, *, float_fallback: bool = False, min_speedup: float = 1.0,
                 tune: bool = False, tune_trials: int | None = None, tune_cache: str | os.PathLike | None = None):
        """float_fallback: after the build, time every integer conv/linear layer against a float32
        version of it (float_yardstick.py) and keep the layers where int8 is not `min_speedup` times
        faster in float (compile() then rebuilds once). Off by default: it adds a build of the float
        layers and a few timed runs to every compile.

        tune: time up to `tune_trials` (default tuning.DEFAULT_TRIALS) schedules of every kernel and keep
        the fastest (tuning.py); the decisions are saved in `tune_cache` (a directory, default
        $QCOMPILE_CACHE/tuning or ~/.cache/qcompile/tuning) and later tuned compiles reuse them without
        measuring. Off by default, and then the records are never read: untuned builds are deterministic."""
        self.target = target or host_target()
        self.float_fallback = float_fallback
        self.min_speedup = min_speedup
        self.tune = tuning.options(tune, tune_trials, tune_cache)

    def _build(self, mod: tvm.IRModule, layers: dict[str, str], tuner: tuning.Tuner | None = None) -> TVMRunner:
        before, grouped = group(mod)
        sites = profile.call_sites(before, grouped, layers)
        executable = tvm.compile(schedule(grouped, self.target, tuner), target=self.target)
        return TVMRunner(executable, sites, tuning=tuner.summary() if tuner else None)

    def build(self, gm: fx.GraphModule) -> TVMRunner:
        tuner = tuning.Tuner(self.target, self.tune) if self.tune else None
        mod = to_relax(gm, target=self.target, choose_tiling=tuner.tiling if tuner else default_tiling)
        return self._build(mod, profile.layer_names(gm), tuner)

    def slower_than_float(self, gm: fx.GraphModule, runner: TVMRunner) -> dict[str, str]:
        """layer -> reason, for the integer layers that should stay float (empty unless float_fallback)."""
        floats = float_yardstick.float_module(gm) if self.float_fallback else None
        if floats is None:
            return {}
        mod, zeros = floats
        float_us = float_yardstick.layer_times(self._build(mod, profile.layer_names(gm)).profile(*zeros))
        inputs = [torch.zeros(p.meta["val"].shape, dtype=p.meta["val"].dtype) for p in gm.graph.find_nodes(op="placeholder")]
        int_us = float_yardstick.layer_times(runner.profile(*inputs))
        return float_yardstick.verdicts(int_us, float_us, self.min_speedup)

    def load(self, directory: Path, gm: fx.GraphModule) -> TVMRunner:
        lib = Path(directory) / LIBRARY
        if not lib.is_file():
            from ...serialize import ArtifactError

            raise ArtifactError(f"{directory} has no {LIBRARY}: it was not saved by the x86 backend")
        return TVMRunner(tvm.runtime.load_module(str(lib)), profile.load_sites(Path(directory) / KERNELS))
