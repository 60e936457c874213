"""`target="x86"`: the integer graph built with TVM + LLVM for the host CPU, with the CPU kernels and
schedule (../cpu/), tuned per kernel with tune=True (cpu/tuning.py)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
import tvm
from torch import fx
from tvm import relax

from ...base import Backend, Capability
from .. import profile
from ..cpu import pipeline as cpu_pipeline
from ..cpu import tuning
from ..cpu.gemm_lowering import default_tiling
from ..cpu.isa import host_target
from ..pipeline import KERNELS, LIBRARY, LibraryBackend, group
from . import float_yardstick

# TVM's CPU thread pool defaults to half the logical CPUs (one thread on a 2-vCPU machine); use them all
# unless the user chose. Read when the pool starts, i.e. at the first parallel call, after this import.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


class TVMRunner:
    """Calls a built Relax VM function with torch tensors (zero-copy through DLPack).

    A Relax VirtualMachine keeps its registers and call frames in the object, so two threads calling one
    VM corrupt each other's state (a crash). Each calling thread gets its own VM of the same executable,
    made on its first call: the kernels and constants are shared, the frames and memory pools are not."""

    def __init__(self, executable, sites: list[profile.CallSite], device=None, tuning: dict | None = None):
        self.executable = executable
        self.sites = sites
        self.device = device or tvm.cpu()
        self.tuning = tuning  # with tune=True: kernels measured / reused from the records, seconds, records file
        self._per_thread = threading.local()

    @property
    def vm(self) -> relax.VirtualMachine:
        """This thread's VM."""
        vm = getattr(self._per_thread, "vm", None)
        if vm is None:
            vm = self._per_thread.vm = relax.VirtualMachine(self.executable, self.device)
        return vm

    def __call__(self, *inputs: torch.Tensor):
        main = getattr(self._per_thread, "main", None)
        if main is None:  # looking the function up costs as much as a small kernel: once per thread
            main = self._per_thread.main = self.vm["main"]
        return tuple(torch.from_dlpack(o) for o in main(*[tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]))

    def profile(self, *inputs: torch.Tensor) -> list[dict]:
        """Median µs of every kernel call of one run, with the layers each computes (see profile.py)."""
        return profile.profile(self.vm, self.sites, list(inputs))

    def benchmark(self, *inputs: torch.Tensor, number: int, repeat: int) -> profile.BenchmarkResult:
        args = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
        return profile.time_vm(self.vm, self.device, args, number=number, repeat=repeat, where="this host's CPU")

    def save(self, directory: Path) -> None:
        self.executable.export_library(str(Path(directory) / LIBRARY))
        profile.save_sites(self.sites, Path(directory) / KERNELS)


class X86Backend(LibraryBackend, Backend):
    name = "x86"
    # dims that torch.export leaves free stay symbolic in the module
    capabilities = frozenset({Capability.PROFILE, Capability.BENCHMARK, Capability.SAVE, Capability.TUNE,
                              Capability.DYNAMIC_SHAPES, Capability.NATIVE_LIBRARY})

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
        executable = tvm.compile(cpu_pipeline.schedule(grouped, self.target, tuner), target=self.target)
        return TVMRunner(executable, sites, tuning=tuner.summary() if tuner else None)

    def build(self, gm: fx.GraphModule) -> TVMRunner:
        tuner = tuning.Tuner(self.target, self.tune) if self.tune else None
        mod = cpu_pipeline.lower(gm, self.target, tuner.tiling if tuner else default_tiling)
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

    def runner_for(self, library: Path, sites: list[profile.CallSite], directory: Path) -> TVMRunner:
        return TVMRunner(tvm.runtime.load_module(str(library)), sites)
