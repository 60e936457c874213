"""Running a cross-compiled library on a device through TVM's RPC: a board (`remote="host:port"`), a board
farm behind a tracker (`tracker="host:port", key="rk3588"`), or the emulated device `make arm-emulator`
starts.

A TVM RPC server on a board serves one session at a time (`python -m tvm.exec.rpc_server`), so:
- with `remote=` a compiled model opens one session on its first call and keeps it while it lives (the
  library is uploaded once); a second client meanwhile waits, and after `connect_timeout` seconds gets an
  error that says so instead of waiting without end;
- with `tracker=` every call asks the tracker for a free device and gives it back when done, so calls
  from several threads spread over every device registered under the key.
"""
from __future__ import annotations

import contextlib
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import tvm
from tvm import relax, rpc

from ....errors import UsageError
from .. import profile
from ..pipeline import KERNELS, LIBRARY
from ..profile import BenchmarkResult, time_vm
from . import emulator


def _host_port(address: str, what: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{what} must be 'host:port', got {address!r}")
    return host, int(port)


def _within(seconds: float, connect, what: str, hint: str = ""):
    """connect() in a daemon thread: TVM's RPC handshake has no timeout of its own, and a busy server
    does not answer until its current session ends."""
    outcome: dict = {}

    def attempt():
        try:
            outcome["session"] = connect()
        except Exception as exc:  # noqa: BLE001  (re-raised below, in the caller's thread)
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise UsageError(f"{what} did not answer within {seconds:g} s{hint}")
    if "error" in outcome:
        raise UsageError(f"cannot reach {what}: {outcome['error']}") from outcome["error"]
    return outcome["session"]


class Device:
    """Where a library runs. Nothing is opened before the first call: building and saving need no device."""

    def __init__(self, remote: str | None = None, tracker: str | None = None, key: str | None = None,
                 connect_timeout: float = 60.0):
        if tracker is not None and key is None:
            raise UsageError("tracker= needs key= (the device key the boards registered under, e.g. key='rk3588')")
        if remote is not None and tracker is not None:
            raise UsageError("give remote= or tracker=, not both")
        for address, what in ((remote, "remote"), (tracker, "tracker")):
            if address is not None:
                _host_port(address, what)
        self.remote, self.tracker, self.key = remote, tracker, key
        self.connect_timeout = connect_timeout

    @property
    def per_call(self) -> bool:
        """A session per call (tracker: give the device back for others) or one held session."""
        return self.tracker is not None

    def address(self) -> str:
        """What the calls go to, for messages and benchmark results."""
        if self.tracker is not None:
            return f"tracker {self.tracker} key {self.key!r}"
        return self.remote or self._emulator()

    @property
    def emulated(self) -> bool:
        running = emulator.running_server()
        return self.tracker is None and running is not None and self.address() == "%s:%d" % running

    def open(self) -> rpc.RPCSession:
        if self.tracker is not None:
            return self._from_tracker()
        address = self.address()
        return _within(self.connect_timeout, lambda: rpc.connect(*_host_port(address, "remote")),
                       f"the TVM RPC server at {address}",
                       ": a board's server serves one session at a time, so another client (another compiled "
                       "model, another process) probably holds it; free that one, pass connect_timeout=, or "
                       "put the boards behind a tracker (tracker=, key=)")

    def _from_tracker(self) -> rpc.RPCSession:
        host, port = _host_port(self.tracker, "tracker")
        tracker = _within(self.connect_timeout, lambda: rpc.connect_tracker(host, port),
                          f"the TVM RPC tracker at {self.tracker}")
        queues = tracker.summary().get("queue_info", {})
        if self.key not in queues:
            raise UsageError(f"no device is registered under key {self.key!r} at the tracker {self.tracker} "
                             f"(keys there: {', '.join(sorted(queues)) or 'none'})")
        return tracker.request(self.key)  # waits while every device of the key is busy

    @staticmethod
    def _emulator() -> str:
        address = emulator.running_server()
        if address is None:
            raise UsageError(
                "ARM targets run on an aarch64 device over TVM RPC, and none was given: start the emulated "
                "device with `make arm-emulator` (in the qcompile project folder), or pass "
                "remote='host:port' (a board running `python -m tvm.exec.rpc_server`) or "
                "tracker='host:port', key='...' (a TVM RPC tracker)")
        return "%s:%d" % address


@dataclass(frozen=True)
class Loaded:
    """The library loaded in one session: the session itself is kept alive through `dev` and `vm`."""

    dev: tvm.runtime.Device
    vm: relax.VirtualMachine


def _outputs(vm: relax.VirtualMachine) -> list:
    """The flat result tuple of `main` after invoke_stateful. Not VirtualMachine.get_outputs: its recursive
    closure is a reference cycle that kept the RPC session, and with it the device, alive until Python's
    garbage collector ran; a tracker then had no free device to hand out."""
    arity, fetch = vm.module["get_output_arity"]("main"), vm.module["get_output"]
    return [fetch("main", i) for i in range(arity)] if arity >= 0 else [fetch("main")]


class RemoteRunner:
    """Runs the cross-compiled library on the device: called with torch tensors, returns torch tensors."""

    def __init__(self, library: Path, sites: list[profile.CallSite], device: Device):
        self.library = Path(library)
        self.sites = sites
        self.device = device
        self._held: Loaded | None = None
        self._lock = threading.Lock()

    def _load(self, session: rpc.RPCSession) -> Loaded:
        session.upload(str(self.library))
        dev = session.cpu()
        return Loaded(dev, relax.VirtualMachine(session.load_module(self.library.name), dev))

    @contextlib.contextmanager
    def _loaded(self):
        if self.device.per_call:
            yield self._load(self.device.open())
            return
        with self._lock:  # one RPC session is one connection: calls through it go one at a time
            if self._held is None:
                self._held = self._load(self.device.open())
            yield self._held

    def __call__(self, *inputs: torch.Tensor):
        with self._loaded() as loaded:
            args = [tvm.runtime.tensor(t.contiguous().numpy(), loaded.dev) for t in inputs]
            # Over RPC the result tuple stays on the device; the stateful interface fetches it element by element.
            loaded.vm.set_input("main", *args)
            loaded.vm.invoke_stateful("main")
            return tuple(torch.from_numpy(o.numpy()) for o in _outputs(loaded.vm))

    def benchmark(self, *inputs: torch.Tensor, number: int, repeat: int) -> BenchmarkResult:
        with self._loaded() as loaded:
            args = [tvm.runtime.tensor(t.contiguous().numpy(), loaded.dev) for t in inputs]
            return time_vm(loaded.vm, loaded.dev, args, number=number, repeat=repeat,
                           where=self.device.address(), emulated=self.device.emulated)

    def save(self, directory: Path) -> None:
        shutil.copyfile(self.library, Path(directory) / LIBRARY)
        profile.save_sites(self.sites, Path(directory) / KERNELS)

    def close(self) -> None:
        """Give the held session back (the device's server is then free for other clients)."""
        with self._lock:
            self._held = None
