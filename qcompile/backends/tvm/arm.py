"""`target="arm"`: the integer graph cross-compiled for aarch64 Linux with TVM + LLVM and
`aarch64-linux-gnu-g++`, run on a device through TVM's RPC: a board (`remote="host:port"`), a board farm
behind a tracker (`tracker="host:port", key="rk3588"`), or the emulated device `make arm-emulator` starts.

Named variants pick the CPU: "arm" (Cortex-A76 class: NEON + dot product), "arm-a55" (Cortex-A53/A55:
NEON without dot product), "arm-i8mm" (NEON + dot product + i8mm); `target=` takes any TVM target dict.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
import tvm
from torch import fx
from tvm import relax, rpc
from tvm.support import cc

from ...errors import UsageError
from . import arm_emulator, profile
from .lower import to_relax
from .x86 import KERNELS, LIBRARY, group, schedule

_AARCH64 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}
VARIANTS: dict[str, dict] = {
    "arm": {**_AARCH64, "mcpu": "cortex-a76", "mattr": ["+neon", "+dotprod"]},
    "arm-a55": {**_AARCH64, "mcpu": "cortex-a55", "mattr": ["+neon", "-dotprod"]},  # the A53 path (dot product is optional on A55)
    "arm-i8mm": {**_AARCH64, "mcpu": "neoverse-n2", "mattr": ["+neon", "+dotprod", "+i8mm"]},
}
CROSS_COMPILER = "aarch64-linux-gnu-g++"


def _host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{what} must be 'host:port', got {address!r}")
    return host, int(port)


class Device:
    """Where an ARM library runs: opens the RPC session on first use, so that building and saving need no device."""

    def __init__(self, remote: str | None, tracker: str | None, key: str | None):
        if tracker is not None and key is None:
            raise UsageError("tracker= needs key= (the device key the boards registered under, e.g. key='rk3588')")
        if remote is not None and tracker is not None:
            raise UsageError("give remote= or tracker=, not both")
        self.remote, self.tracker, self.key = remote, tracker, key

    def session(self) -> rpc.RPCSession:
        if self.tracker is not None:
            return rpc.connect_tracker(*_host_port(self.tracker, "tracker")).request(self.key)
        return rpc.connect(*_host_port(self.remote or self._emulator(), "remote"))

    @staticmethod
    def _emulator() -> str:
        address = arm_emulator.running_server()
        if address is None:
            raise UsageError(
                "ARM targets run on an aarch64 device over TVM RPC, and none was given: start the emulated "
                "device with `make arm-emulator` (in the qcompile project folder), or pass "
                "remote='host:port' (a board running `python -m tvm.exec.rpc_server`) or "
                "tracker='host:port', key='...' (a TVM RPC tracker)")
        return "%s:%d" % address


class RemoteRunner:
    """Runs the cross-compiled library on the device: uploaded once, called with torch tensors."""

    def __init__(self, library: Path, sites: list[profile.CallSite], device: Device):
        self.library = library
        self.sites = sites
        self.device = device
        self._vm = None

    def _remote_vm(self):
        if self._vm is None:
            sess = self.device.session()
            sess.upload(str(self.library))
            self._dev = sess.cpu()
            self._vm = relax.VirtualMachine(sess.load_module(self.library.name), self._dev)
        return self._vm

    def __call__(self, *inputs: torch.Tensor):
        vm = self._remote_vm()
        args = [tvm.runtime.tensor(t.contiguous().numpy(), self._dev) for t in inputs]
        # Over RPC the result tuple stays on the device; the stateful interface fetches it element by element.
        vm.set_input("main", *args)
        vm.invoke_stateful("main")
        return tuple(torch.from_numpy(o.numpy()) for o in vm.get_outputs("main"))

    def save(self, directory: Path) -> None:
        shutil.copyfile(self.library, Path(directory) / LIBRARY)
        profile.save_sites(self.sites, Path(directory) / KERNELS)


class ArmBackend:
    """target="arm"; the variants below differ only in the CPU they build for."""

    name = "arm"
    supports_dynamic_shapes = True

    def __init__(self, *, target: dict | None = None, remote: str | None = None, tracker: str | None = None,
                 key: str | None = None):
        self.target = tvm.target.Target(target or VARIANTS[self.name])
        self.device = Device(remote, tracker, key)
        self._builds = Path(tempfile.mkdtemp(prefix="qcompile-arm-"))

    def build(self, gm: fx.GraphModule) -> RemoteRunner:
        if shutil.which(CROSS_COMPILER) is None:
            raise UsageError(f"target {self.name!r} cross-compiles with {CROSS_COMPILER}, which is not installed: "
                             "`make arm-emulator` installs it (Debian package g++-aarch64-linux-gnu)")
        before, grouped = group(to_relax(gm, target=self.target))
        sites = profile.call_sites(before, grouped, profile.layer_names(gm))
        executable = tvm.compile(schedule(grouped, self.target), target=self.target)
        library = self._builds / f"model-{len(list(self._builds.iterdir()))}.so"
        executable.export_library(str(library), fcompile=cc.cross_compiler(CROSS_COMPILER))
        return RemoteRunner(library, sites, self.device)

    def load(self, directory: Path, gm: fx.GraphModule) -> RemoteRunner:
        library = Path(directory) / LIBRARY
        if not library.is_file():
            from ...serialize import ArtifactError

            raise ArtifactError(f"{directory} has no {LIBRARY}: it was not saved by an ARM backend")
        return RemoteRunner(library, profile.load_sites(Path(directory) / KERNELS), self.device)


class ArmA55Backend(ArmBackend):
    name = "arm-a55"


class ArmI8mmBackend(ArmBackend):
    name = "arm-i8mm"
