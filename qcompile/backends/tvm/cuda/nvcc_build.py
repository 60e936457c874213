"""CUDA kernels compiled at build time, on the host, with nvcc: a saved artifact carries a cubin and runs
where only the TVM runtime and the NVIDIA driver are (no compiler, no NVRTC at load time).

TVM 0.27 hands CUDA source to its CUDA runtime's module factory, which compiles it through the global
`tvm_callback_cuda_compile`; without that runtime loaded it keeps the source, to be compiled where the
library is loaded. So the build loads the runtime (with a stand-in driver on machines without one:
emulator/driver_stub.c) and registers a callback that runs nvcc, keeping the source, PTX and ptxas report of
every build for inspection."""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import tvm
import tvm_ffi

from ....errors import UsageError
from . import runtime

DEFAULT_ARCH = "sm_90a"  # the H100's full instruction set (wgmma); "sm_90" runs on any Hopper, "sm_80" on Ampere


def nvcc() -> str:
    path = shutil.which("nvcc") or shutil.which("nvcc", path="/usr/local/cuda/bin")
    if path is None:
        raise UsageError("target 'cuda' compiles its kernels with nvcc when it builds, and nvcc is not on PATH: "
                         "install the CUDA toolkit (no GPU is needed to build)")
    return path


def require_gpu(what: str) -> None:
    """A clear error when this machine cannot run CUDA kernels."""
    why = runtime.missing_gpu()
    if why:
        raise UsageError(f"{what} needs an NVIDIA GPU to run, and {why}. The model is built: save() it and "
                         "load it with qcompile.load() on a machine with a GPU (it needs the TVM runtime only)")


# Shared memory one thread block may opt into, per compute capability (CUDA programming guide, "Technical
# Specifications"); other architectures get the 48 KiB every one has.
_SHARED_MEMORY = {"sm_90": 232448, "sm_80": 166912, "sm_86": 101376, "sm_87": 166912, "sm_89": 101376}


def gpu_present() -> bool:
    return runtime.missing_gpu() is None


def target(arch: str = DEFAULT_ARCH) -> tvm.target.Target:
    """CUDA kernels for `arch`; the host side (argument checks, kernel launches) for any x86-64 CPU, since
    the GPU machine's CPU is not this one."""
    if not re.fullmatch(r"sm_\d{2,3}[af]?", arch):
        raise UsageError(f"arch must name a CUDA architecture such as 'sm_90a', 'sm_90' or 'sm_80', got {arch!r}")
    shared = _SHARED_MEMORY.get(arch.rstrip("af"), 49152)
    return tvm.target.Target(
        {"kind": "cuda", "arch": arch, "max_shared_memory_per_block": shared, "max_threads_per_block": 1024,
         "thread_warp_size": 32, "registers_per_block": 65536},
        host={"kind": "llvm", "mtriple": "x86_64-linux-gnu"},
    )


@dataclass
class KernelBuild:
    """What nvcc made of one model's kernels: the CUDA source, its PTX and ptxas's per-kernel report."""
    directory: Path

    @property
    def source(self) -> str:
        return (self.directory / "kernels.cu").read_text()

    @property
    def ptx(self) -> str:
        return (self.directory / "kernels.ptx").read_text()

    @property
    def ptxas_report(self) -> str:
        return (self.directory / "ptxas.log").read_text()

    def kernel_ptx(self) -> dict[str, str]:
        """kernel name -> its PTX body."""
        bodies = re.split(r"^\.visible \.entry ", self.ptx, flags=re.M)[1:]
        return {body.split("(", 1)[0]: body for body in bodies}

    def spills(self) -> dict[str, int]:
        """kernel name -> bytes of registers spilled to local memory (stores), from ptxas -v."""
        return self._per_kernel(r"(\d+) bytes spill stores")

    def registers(self) -> dict[str, int]:
        """kernel name -> registers per thread, from ptxas -v."""
        return self._per_kernel(r"Used (\d+) registers")

    def _per_kernel(self, pattern: str) -> dict[str, int]:
        """kernel name -> the number `pattern` captures in the ptxas report lines of that kernel."""
        found, kernel = {}, None
        for line in self.ptxas_report.splitlines():
            m = re.search(r"Compiling entry function '(\w+)'", line)
            if m:
                kernel = m.group(1)
            m = re.search(pattern, line)
            if m and kernel:
                found[kernel] = int(m.group(1))
        return found


# TVM 0.27's CUDA codegen prints a 16-lane broadcast of a zero byte (the padding value of a predicated
# 16-byte copy into shared memory) as make_uint4 / make_int4 with 16 byte arguments, which nvcc rejects;
# the 16 zero bytes are four zero words.
_ZERO_BYTES_X16 = re.compile(r"make_(u?)int4\(\((?:uchar|signed char)\)0(?:, \((?:uchar|signed char)\)0){15}\)")


def _fix_codegen(source: str) -> str:
    return _ZERO_BYTES_X16.sub(lambda m: f"make_{m.group(1)}int4(0, 0, 0, 0)", source)


def _compile(source: str, arch: str, directory: Path) -> bytes:
    directory.mkdir(parents=True, exist_ok=True)
    cu, ptx, cubin = (directory / f"kernels.{ext}" for ext in ("cu", "ptx", "cubin"))
    cu.write_text(_fix_codegen(source))
    compiler = nvcc()
    # --fmad=false: a * b + c stays two roundings, as in the reference backend (float epilogues then match
    # it bit for bit); kernels that want fused multiply-adds write them (gemv_kernel.py).
    _run([compiler, "--ptx", f"-arch={arch}", "-O3", "--fmad=false", "-w", "-o", str(ptx), str(cu)], "nvcc")
    report = _run([compiler, "--cubin", f"-arch={arch}", "-O3", "-w", "-Xptxas", "-v", "-o", str(cubin), str(ptx)], "ptxas")
    (directory / "ptxas.log").write_text(report)
    return cubin.read_bytes()


def _run(cmd: list[str], what: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed on the generated CUDA kernels ({' '.join(cmd)}):\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


@contextlib.contextmanager
def nvcc_compiles(arch: str, directory: Path):
    """Inside: TVM's CUDA builds go through nvcc for `arch` into cubins. Yields the KernelBuild."""
    runtime.load_runtime()
    build = KernelBuild(Path(directory))
    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", lambda code: _compile(code, arch, build.directory), override=True)
    try:
        yield build
    finally:
        if previous is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)
