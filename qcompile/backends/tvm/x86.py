"""`target="x86"`: the integer graph built with TVM + LLVM for the host CPU, scheduled without tuning."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import tvm
from torch import fx
from tvm import relax
from tvm.s_tir import dlight

from . import x86_gemm
from .lower import to_relax
from .schedule_cpu import FusedIntegerKernel

LIBRARY = "model.so"

# TVM's CPU thread pool defaults to half the logical CPUs (one thread on a 2-vCPU machine); use them all
# unless the user chose. Read when the pool starts, i.e. at the first parallel call, after this import.
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def host_target() -> tvm.target.Target:
    """LLVM for this machine's CPU (detected, never hard-coded), on all its cores."""
    return tvm.target.Target(x86_gemm.host_target())


def optimize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Fuse each accumulator with its epilogue (bias, requantize, residual add), then schedule every kernel."""
    fuse = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),  # float islands arrive as high-level Relax ops
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ])
    mod = fuse(mod)
    with target:
        return dlight.ApplyDefaultSchedule(FusedIntegerKernel())(mod)


class TVMRunner:
    """Calls a built Relax VM function with torch tensors (zero-copy through DLPack)."""

    def __init__(self, executable, device=None):
        self.executable = executable
        self.device = device or tvm.cpu()
        self.vm = relax.VirtualMachine(executable, self.device)

    def __call__(self, *inputs: torch.Tensor):
        args = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
        return tuple(torch.from_dlpack(o) for o in self.vm["main"](*args))

    def save(self, directory: Path) -> None:
        self.executable.export_library(str(Path(directory) / LIBRARY))


class X86Backend:
    name = "x86"
    supports_dynamic_shapes = True  # dims that torch.export leaves free stay symbolic in the module

    def __init__(self, target: tvm.target.Target | None = None):
        self.target = target or host_target()

    def build(self, gm: fx.GraphModule) -> TVMRunner:
        mod = optimize(to_relax(gm, target=self.target), self.target)
        return TVMRunner(tvm.compile(mod, target=self.target))

    def load(self, directory: Path, gm: fx.GraphModule) -> TVMRunner:
        lib = Path(directory) / LIBRARY
        if not lib.is_file():
            from ...serialize import ArtifactError

            raise ArtifactError(f"{directory} has no {LIBRARY}: it was not saved by the x86 backend")
        return TVMRunner(tvm.runtime.load_module(str(lib)))
