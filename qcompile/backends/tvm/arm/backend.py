"""`target="arm"`: the integer graph cross-compiled for aarch64 Linux with TVM + LLVM and
`aarch64-linux-gnu-g++`, run on a device through TVM's RPC (remote.py): a board (`remote="host:port"`), a
board farm behind a tracker (`tracker="host:port", key="rk3588"`), or the emulated device `make arm-emulator`
starts.

Named variants pick the CPU: "arm" (Cortex-A76 class: NEON + dot product), "arm-a55" (Cortex-A53/A55:
NEON without dot product), "arm-i8mm" (Neoverse N2 class: NEON + dot product + i8mm); `target=` takes any TVM
target dict. GEMM-shaped ops run on the best kernel the CPU features allow (cpu/isa.py): smmla with
i8mm, else sdot with the dot product, else generic TE.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import tvm
from torch import fx
from tvm.support import cc

from ....errors import UsageError
from ...base import Backend, Capability
from .. import profile
from ..cpu import pipeline as cpu_pipeline
from ..pipeline import LibraryBackend, group
from .remote import Device, RemoteRunner

_AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
VARIANTS: dict[str, dict] = {
    "arm": {**_AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]},
    "arm-a55": {**_AARCH64, "mcpu": "cortex-a55", "mattr": ["+neon", "-dotprod"]},  # the A53 path (dot product is optional on A55)
    "arm-i8mm": {**_AARCH64, "mcpu": "neoverse-n2", "mattr": ["+neon", "+dotprod", "+i8mm"]},
}
CROSS_COMPILER = "aarch64-linux-gnu-g++"


class ArmBackend(LibraryBackend, Backend):
    """target="arm"; the variants below differ only in the CPU they build for."""

    name = "arm"
    capabilities = frozenset({Capability.BENCHMARK, Capability.SAVE, Capability.DYNAMIC_SHAPES, Capability.REMOTE,
                              Capability.NATIVE_LIBRARY})

    def __init__(self, *, target: dict | None = None, remote: str | None = None, tracker: str | None = None,
                 key: str | None = None, connect_timeout: float = 60.0):
        self.target = tvm.target.Target(target or VARIANTS[self.name])
        self.device = Device(remote, tracker, key, connect_timeout)
        self._builds = Path(tempfile.mkdtemp(prefix="qcompile-arm-"))

    def build(self, gm: fx.GraphModule) -> RemoteRunner:
        if shutil.which(CROSS_COMPILER) is None:
            raise UsageError(f"target {self.name!r} cross-compiles with {CROSS_COMPILER}, which is not installed: "
                             "`make arm-emulator` installs it (Debian package g++-aarch64-linux-gnu)")
        before, grouped = group(cpu_pipeline.lower(gm, self.target))
        sites = profile.call_sites(before, grouped, profile.layer_names(gm))
        executable = tvm.compile(cpu_pipeline.schedule(grouped, self.target), target=self.target)
        library = self._builds / f"model-{len(list(self._builds.iterdir()))}.so"
        executable.export_library(str(library), fcompile=cc.cross_compiler(CROSS_COMPILER))
        return RemoteRunner(library, sites, self.device)

    def runner_for(self, library: Path, sites: list[profile.CallSite], directory: Path) -> RemoteRunner:
        return RemoteRunner(library, sites, self.device)


class ArmA55Backend(ArmBackend):
    name = "arm-a55"


class ArmI8mmBackend(ArmBackend):
    name = "arm-i8mm"
