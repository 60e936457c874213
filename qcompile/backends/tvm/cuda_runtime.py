"""Running a built CUDA model: TVM's runtime only, no compiler and nothing else from qcompile, so that the
GPU machine can run saved libraries with `TVM_USE_RUNTIME_LIB=1` and a TVM package without its compiler
library (tools/cuda_device.py loads this file by path)."""
from __future__ import annotations

import ctypes
import functools
import os
import subprocess
from pathlib import Path

import torch
import tvm
from tvm.runtime.vm import VirtualMachine

_STUB_SOURCE = Path(__file__).with_name("cuda_driver_stub.c")
_CACHE = Path(os.environ.get("QCOMPILE_CACHE", Path.home() / ".cache" / "qcompile"))


def _load_driver() -> bool:
    """Load the NVIDIA driver library, or the stand-in (cuda_driver_stub.c); True if the real driver is there."""
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        pass
    stub = _CACHE / "cuda-driver-stub" / "libcuda.so.1"
    if not stub.exists() or stub.stat().st_mtime < _STUB_SOURCE.stat().st_mtime:
        stub.parent.mkdir(parents=True, exist_ok=True)
        partial = stub.with_suffix(f".{os.getpid()}")
        subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o", str(partial), str(_STUB_SOURCE)],
                       check=True, capture_output=True)
        partial.replace(stub)  # atomic: parallel test sessions may build it at once
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    return False


@functools.cache
def load_runtime() -> bool:
    """Load TVM's CUDA runtime (once per process): builds then produce cubins, and saved CUDA libraries
    load. True if the real NVIDIA driver is there (else the stand-in)."""
    driver = _load_driver()
    ctypes.CDLL(os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
    return driver


def missing_gpu() -> str | None:
    """Why this process cannot run CUDA kernels, or None when it can."""
    if not load_runtime():
        return "there is no NVIDIA driver on this machine"
    if not tvm.cuda(0).exist:
        return "the NVIDIA driver sees no GPU"
    return None


class GpuModel:
    """A built model's Relax VM on the first GPU, called with torch tensors (any device; moved to the GPU
    zero-copy through DLPack) and returning torch tensors on the GPU."""

    def __init__(self, library):  # a path, or a loaded module or executable
        load_runtime()
        self.library = tvm.runtime.load_module(str(library)) if isinstance(library, (str, Path)) else library
        self.vm = VirtualMachine(self.library, tvm.cuda(0))

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.from_dlpack(o) for o in self.vm["main"](*self._arguments(inputs)))

    def time(self, *inputs: torch.Tensor, number: int = 10, repeat: int = 5) -> list[float]:
        """Seconds per call of each of `repeat` rounds of `number` calls, timed on the GPU's stream by
        TVM's time evaluator (the calls are queued back to back; no host round trip is counted)."""
        self.vm.set_input("main", *self._arguments(inputs))
        evaluator = self.vm.time_evaluator("invoke_stateful", tvm.cuda(0), number=number, repeat=repeat)
        return list(evaluator("main").results)

    @staticmethod
    def _arguments(inputs) -> list:
        return [tvm.runtime.from_dlpack(t.contiguous().cuda()) for t in inputs]
