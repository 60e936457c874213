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

# Where there is no NVIDIA driver, these stand in for the driver and the CUDA runtime library (soname: source)
_STAND_INS = {"libcuda.so.1": "driver_stub.c", "libcudart.so.13": "runtime_stub.c"}
STAND_IN_SOURCES = Path(__file__).parent / "emulator"
CACHE = Path(os.environ.get("QCOMPILE_CACHE", Path.home() / ".cache" / "qcompile"))  # built helpers


def _stand_in(soname: str, source_name: str) -> Path:
    """The stand-in library for `soname`, built from `source_name` when missing or older than its source."""
    source = STAND_IN_SOURCES / source_name
    library = CACHE / "cuda-stand-ins" / soname
    if library.exists() and library.stat().st_mtime >= source.stat().st_mtime:
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    # TVM's runtime asks for libcudart's symbols at version libcudart.so.13
    versions = library.with_name(f"{soname}.map")
    versions.write_text(f"{soname} {{ global: *; }};\n")
    partial = library.with_suffix(f".{os.getpid()}")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", f"-Wl,-soname,{soname}", f"-Wl,--version-script={versions}",
                    "-o", str(partial), str(source), "-ldl"], check=True, capture_output=True)
    partial.replace(library)  # atomic: parallel test sessions may build it at once
    return library


def _load_driver() -> bool:
    """Load the NVIDIA driver library, or the stand-ins (emulator/driver_stub.c, emulator/runtime_stub.c); True if
    the real driver is there."""
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return True
    except OSError:
        pass
    for soname, source in _STAND_INS.items():
        ctypes.CDLL(str(_stand_in(soname, source)), mode=ctypes.RTLD_GLOBAL)
    return False


@functools.cache
def stand_in_driver() -> ctypes.CDLL:
    """The driver's stand-in, loaded (its switch: emulator/kernels.emulated_gpu)."""
    if load_runtime():
        raise RuntimeError("this machine has an NVIDIA driver: there is no stand-in to switch")
    return ctypes.CDLL(str(_stand_in("libcuda.so.1", _STAND_INS["libcuda.so.1"])), mode=ctypes.RTLD_GLOBAL)


def emulating() -> bool:
    """Whether CUDA kernels run on this CPU's emulator now (emulator/kernels.emulated_gpu)."""
    return not load_runtime() and bool(stand_in_driver().qcompile_emulating())


@functools.cache
def load_runtime() -> bool:
    """Load TVM's CUDA runtime (once per process): builds then produce cubins, and saved CUDA libraries
    load. True if the real NVIDIA driver is there (else the stand-in)."""
    driver = _load_driver()
    ctypes.CDLL(os.path.join(os.path.dirname(tvm.__file__), "lib", "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
    return driver


def missing_gpu() -> str | None:
    """Why this process cannot run CUDA kernels, or None when it can."""
    if not load_runtime() and not emulating():
        return "there is no NVIDIA driver on this machine"
    if not tvm.cuda(0).exist:
        return "the NVIDIA driver sees no GPU"
    return None


class GpuModel:
    """A built model's Relax VM on the first GPU, called with torch tensors (any device; moved to the GPU
    zero-copy through DLPack) and returning torch tensors on the GPU (on the CPU when the GPU is emulated)."""

    def __init__(self, library):  # a path, or a loaded module or executable
        load_runtime()
        self.emulated = emulating()  # its memory is then the host's, its tensors pass through numpy
        self.library = tvm.runtime.load_module(str(library)) if isinstance(library, (str, Path)) else library
        self.vm = VirtualMachine(self.library, tvm.cuda(0))

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._output(o) for o in self.vm["main"](*self._arguments(inputs)))

    def time(self, *inputs: torch.Tensor, number: int = 10, repeat: int = 5) -> list[float]:
        """Seconds per call of each of `repeat` rounds of `number` calls, timed on the GPU's stream by
        TVM's time evaluator (the calls are queued back to back; no host round trip is counted)."""
        self.vm.set_input("main", *self._arguments(inputs))
        evaluator = self.vm.time_evaluator("invoke_stateful", tvm.cuda(0), number=number, repeat=repeat)
        return list(evaluator("main").results)

    def _arguments(self, inputs) -> list:
        if self.emulated:  # torch may have no CUDA
            return [tvm.runtime.tensor(t.detach().contiguous().cpu().numpy(), tvm.cuda(0)) for t in inputs]
        return [tvm.runtime.from_dlpack(t.contiguous().cuda()) for t in inputs]

    def _output(self, o) -> torch.Tensor:
        return torch.from_numpy(o.numpy()) if self.emulated else torch.from_dlpack(o)
