"""`target="cuda"`: the integer graph built with TVM for NVIDIA GPUs. Kernels are compiled to a cubin at
build time (nvcc_build.py), so a model builds and saves on a machine without a GPU; it runs where one is."""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import torch
import tvm
from torch import fx

from ...base import Backend, Capability
from .. import profile
from ..pipeline import KERNELS, LIBRARY, LibraryBackend, group
from . import nvcc_build, pipeline, runtime, weight_only_lowering

KERNEL_SOURCES = "cuda"  # the artifact's folder with the kernels' CUDA source, PTX and ptxas report


class CudaRunner:
    """Calls a built model on the GPU (inputs from any device, outputs on the GPU); built or loaded
    without one, calling it says so. Calls from several threads take turns (a lock): the kernels of all
    calls run one after another on the device's stream anyway, and one VM's frames are not safe to share."""

    def __init__(self, executable, sites: list[profile.CallSite], kernels: nvcc_build.KernelBuild | None):
        self.executable = executable
        self.sites = sites
        self.kernels = kernels
        self._gpu: runtime.GpuModel | None = None
        self._lock = threading.RLock()

    def _model(self) -> runtime.GpuModel:
        emulated = runtime.emulating()
        if self._gpu is None or self._gpu.emulated != emulated:  # first, or the emulator was switched since
            nvcc_build.require_gpu("this model (target 'cuda')")
            if emulated:
                self._register_emulated_kernels()
            self._gpu = runtime.GpuModel(self.executable)
        return self._gpu

    def _register_emulated_kernels(self) -> None:
        from .emulator.kernels import EmulationError, register_kernels

        if self.kernels is None:
            raise EmulationError("this CUDA model was saved without its kernels' source: it cannot be emulated")
        register_kernels(self.kernels.directory)

    def __call__(self, *inputs: torch.Tensor):
        with self._lock:
            return self._model()(*inputs)

    def profile(self, *inputs: torch.Tensor) -> list[dict]:
        """Median µs of every kernel call of one run, with the layers each computes (see profile.py); none
        on a machine without a GPU (the report then has no times)."""
        if not nvcc_build.gpu_present():
            return []
        with self._lock:
            return profile.profile(self._model().vm, self.sites, [t.cuda() for t in inputs], sync=tvm.cuda(0).sync)

    def benchmark(self, *inputs: torch.Tensor, number: int, repeat: int) -> profile.BenchmarkResult:
        with self._lock:
            times = self._model().time(*inputs, number=number, repeat=repeat)
        return profile.BenchmarkResult.of("the GPU", times, number)

    def save(self, directory: Path) -> None:
        self.executable.export_library(str(Path(directory) / LIBRARY))
        profile.save_sites(self.sites, Path(directory) / KERNELS)
        if self.kernels is not None:
            shutil.copytree(self.kernels.directory, Path(directory) / KERNEL_SOURCES, dirs_exist_ok=True)


class CudaBackend(LibraryBackend, Backend):
    name = "cuda"
    capabilities = frozenset({Capability.PROFILE, Capability.BENCHMARK, Capability.SAVE, Capability.DYNAMIC_SHAPES,
                              Capability.NATIVE_LIBRARY})

    def __init__(self, *, arch: str = nvcc_build.DEFAULT_ARCH, gemv: str = weight_only_lowering.DEFAULT_GEMV):
        """arch: the GPU architecture the cubin is for ('sm_90a': H100/H200; 'sm_80': A100; ...).
        gemv: the kernel of decode-shaped weight-only Linear layers: 'tensor_cores', 'cuda_cores', or
        'auto' (tensor cores where the layer's K and group size are multiples of the mma's K step;
        weight_only_lowering.py)."""
        self.target = nvcc_build.target(arch)
        self.gemv = weight_only_lowering.check_gemv(gemv)
        self._builds = Path(tempfile.mkdtemp(prefix="qcompile-cuda-"))

    def build(self, gm: fx.GraphModule) -> CudaRunner:
        nvcc_build.nvcc()  # before lowering: a missing compiler is the first thing to say
        with weight_only_lowering.gemv_kernel(self.gemv):
            before, grouped = group(pipeline.lower(gm, self.target))
        sites = profile.call_sites(before, grouped, profile.layer_names(gm))
        directory = self._builds / f"model-{len(list(self._builds.iterdir()))}"
        executable, kernels = pipeline.compile_module(pipeline.schedule(grouped, self.target), self.target, directory)
        return CudaRunner(executable, sites, kernels)

    def runner_for(self, library: Path, sites: list[profile.CallSite], directory: Path) -> CudaRunner:
        runtime.load_runtime()
        sources = directory / KERNEL_SOURCES
        kernels = nvcc_build.KernelBuild(sources) if sources.is_dir() else None
        return CudaRunner(tvm.runtime.load_module(str(library)), sites, kernels)
