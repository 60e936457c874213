"""`target="x86"`: the integer graph built with TVM + LLVM for the host CPU, scheduled without tuning."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import tvm
from torch import fx
from tvm import relax
from tvm.s_tir import dlight

from . import profile, x86_gemm
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


def group(mod: tvm.IRModule) -> tvm.IRModule:
    """Group each accumulator with its epilogue (bias, requantize, residual add) into one Relax function."""
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),  # float islands arrive as high-level Relax ops
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
    ])(mod)


def schedule(grouped: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Turn each group into one kernel and schedule every kernel."""
    mod = tvm.transform.Sequential([relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()])(grouped)
    with target:
        return dlight.ApplyDefaultSchedule(FusedIntegerKernel())(mod)


def optimize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    return schedule(group(mod), target)


class TVMRunner:
    """Calls a built Relax VM function with torch tensors (zero-copy through DLPack)."""

    def __init__(self, executable, sites: list[profile.CallSite], device=None):
        self.executable = executable
        self.sites = sites
        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)

    def __call__(self, *inputs: torch.Tensor):
        args = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
        return tuple(torch.from_dlpack(o) for o in self.vm["main"](*args))

    def profile(self, *inputs: torch.Tensor) -> list[dict]:
        """Median µs of every kernel call of one run, with the layers each computes (see profile.py)."""
        return profile.profile(self.vm, self.sites, list(inputs))

    def save(self, directory: Path) -> None:
        self.executable.export_library(str(Path(directory) / LIBRARY))
        (Path(directory) / KERNELS).write_text(json.dumps([asdict(s) for s in self.sites]))


class X86Backend:
    name = "x86"
    supports_dynamic_shapes = False  # the TVM module is built for the example shapes (for now)

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target or host_target()

    def build(self, gm: fx.GraphModule) -> TVMRunner:
        grouped = group(to_relax(gm, target=self.target))
        sites = profile.call_sites(grouped, profile.layer_names(gm))
        return TVMRunner(tvm.compile(schedule(grouped, self.target), target=self.target), sites)

    def load(self, directory: Path, gm: fx.GraphModule) -> TVMRunner:
        lib = Path(directory) / LIBRARY
        if not lib.is_file():
            from ...serialize import ArtifactError

            raise ArtifactError(f"{directory} has no {LIBRARY}: it was not saved by the x86 backend")
        kernels = Path(directory) / KERNELS
        sites = [profile.CallSite(s["kernel"], tuple(s["layers"])) for s in json.loads(kernels.read_text())] if kernels.is_file() else []
        return TVMRunner(tvm.runtime.load_module(str(lib)), sites)
