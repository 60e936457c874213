"""A board farm on one host: a TVM RPC tracker on loopback with two emulated aarch64 devices registered
under one key. A compiled model given tracker= and key= asks the tracker for a device per call, so calls
from several threads spread over both devices, and every result is exact."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from tvm import rpc

import qcompile
from qcompile.backends.tvm.arm import emulator as E
from qcompile.errors import UsageError
from tests.models import TinyResNet

KEY = "emu-farm"
DEVICES = ("farm-1", "farm-2")


def _wait_for_devices(port: int, count: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(KEY, {}).get("free") == count:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{count} devices did not register under {KEY!r} within {seconds} s")


@pytest.fixture(scope="module")
def farm():
    from tvm.rpc.tracker import Tracker

    E.setup()
    tracker = Tracker("127.0.0.1", port=9390, port_end=9490, silent=True)
    address = "127.0.0.1:%d" % tracker.port
    try:
        with ThreadPoolExecutor(len(DEVICES)) as pool:
            list(pool.map(lambda name: E.start_server(name, tracker=address, key=KEY), DEVICES))
        _wait_for_devices(tracker.port, len(DEVICES))
        yield address
    finally:
        for name in DEVICES:
            E.stop_server(name)
        tracker.terminate()


def _sessions(name: str) -> int:
    with open(E.log_path(name)) as f:
        return f.read().count("load_module")


def test_a_batch_of_calls_spreads_over_both_devices_and_stays_exact(farm):
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 32, 32)
    ref = qcompile.compile(model, (x,), calibration=[x], progress=False)
    cm = qcompile.compile(model, (x,), target="arm", calibration=[x], progress=False, tracker=farm, key=KEY)
    before = {name: _sessions(name) for name in DEVICES}
    batch = [torch.randn(1, 3, 32, 32) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(cm, batch))
    assert all(torch.equal(y, ref(b)) for y, b in zip(results, batch))
    served = {name: _sessions(name) - before[name] for name in DEVICES}
    assert sum(served.values()) == len(batch) and min(served.values()) >= 1, served


def test_a_key_no_device_registered_under_is_an_error(farm):
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 32, 32)
    cm = qcompile.compile(model, (x,), target="arm", calibration=[x], progress=False, tracker=farm, key="rk3588")
    with pytest.raises(UsageError, match=f"no device is registered under key 'rk3588'.*{KEY}"):
        cm(x)
