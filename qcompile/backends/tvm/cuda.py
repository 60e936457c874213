"""`target="cuda"`: the integer graph built with TVM for NVIDIA GPUs. Kernels are compiled to a cubin at
build time (cuda_build.py), so a model builds and saves on a machine without a GPU; it runs where one is."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
import tvm
from torch import fx
from tvm import relax
from tvm.s_tir import dlight

from . import cuda_build, cuda_depthwise, cuda_fp16_gemm, cuda_gemm, cuda_runtime, cuda_weight_only, profile
from .lower import to_relax
from .x86 import KERNELS, LIBRARY, group

KERNEL_SOURCES = "cuda"  # the artifact's folder with the kernels' CUDA source, PTX and ptxas report


def gpu_rules(gemm_tile: cuda_gemm.GemmTile | None = None) -> list:
    """Schedule rules, tried in order on each kernel (`gemm_tile`: one block tile for every GEMM)."""
    return [cuda_gemm.TensorCoreGemm(gemm_tile), cuda_depthwise.DepthwiseConv(), cuda_fp16_gemm.Float16TensorCoreGemm(),
            dlight.gpu.Matmul(), dlight.gpu.GEMV(),
            dlight.gpu.LowBatchGEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()]


def apply_rules(mod: tvm.IRModule, target: tvm.target.Target, gemm_tile: cuda_gemm.GemmTile | None = None) -> tvm.IRModule:
    """Every kernel of `mod` scheduled by the first of gpu_rules() that takes it."""
    with target:
        return dlight.ApplyDefaultSchedule(*gpu_rules(gemm_tile))(mod)


def schedule(grouped: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    mod = tvm.transform.Sequential([relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()])(grouped)
    return apply_rules(mod, target)


def _lowering(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CUDA Relax pipeline without its legalize-fuse-schedule stage, which schedule() has done: run
    again, it fused a view reshape with its neighbour into a new kernel no rule scheduled, and that kernel
    was compiled for the host, reading device memory from the CPU (a segfault on the GPU machine)."""
    from tvm.relax.backend.cuda import pipeline

    @tvm.transform.module_pass(opt_level=0)
    def lower(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target))(mod)

    return lower


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, directory: Path):
    """(executable, KernelBuild): the scheduled module built with its cubin compiled by nvcc for the
    target's arch, the kernels' source, PTX and ptxas report kept in `directory`."""
    with cuda_build.nvcc_compiles(str(target.attrs["arch"]), directory) as kernels, \
            tvm.transform.PassContext(config=cuda_gemm.PASS_CONFIG):
        return tvm.compile(mod, target=target, relax_pipeline=_lowering(target)), kernels


class CudaRunner:
    """Calls a built model on the GPU (inputs from any device, outputs on the GPU); built or loaded
    without one, calling it says so."""

    def __init__(self, executable, sites: list[profile.CallSite], kernels: cuda_build.KernelBuild | None):
        self.executable = executable
        self.sites = sites
        self.kernels = kernels
        self._gpu: cuda_runtime.GpuModel | None = None

    def _model(self) -> cuda_runtime.GpuModel:
        emulated = cuda_runtime.emulating()
        if self._gpu is None or self._gpu.emulated != emulated:  # first, or the emulator was switched since
            cuda_build.require_gpu("this model (target 'cuda')")
            if emulated:
                self._register_emulated_kernels()
            self._gpu = cuda_runtime.GpuModel(self.executable)
        return self._gpu

    def _register_emulated_kernels(self) -> None:
        from .cuda_emulator import EmulationError, register_kernels

        if self.kernels is None:
            raise EmulationError("this CUDA model was saved without its kernels' source: it cannot be emulated")
        register_kernels(self.kernels.directory)

    def __call__(self, *inputs: torch.Tensor):
        return self._model()(*inputs)

    def profile(self, *inputs: torch.Tensor) -> list[dict]:
        """Median µs of every kernel call of one run, with the layers each computes (see profile.py); none
        on a machine without a GPU (the report then has no times)."""
        if not cuda_build.gpu_present():
            return []
        return profile.profile(self._model().vm, self.sites, [t.cuda() for t in inputs], sync=tvm.cuda(0).sync)

    def benchmark(self, *inputs: torch.Tensor, number: int, repeat: int) -> profile.BenchmarkResult:
        return profile.BenchmarkResult.of("the GPU", self._model().time(*inputs, number=number, repeat=repeat), number)

    def save(self, directory: Path) -> None:
        self.executable.export_library(str(Path(directory) / LIBRARY))
        profile.save_sites(self.sites, Path(directory) / KERNELS)
        if self.kernels is not None:
            shutil.copytree(self.kernels.directory, Path(directory) / KERNEL_SOURCES, dirs_exist_ok=True)


class CudaBackend:
    name = "cuda"
    supports_dynamic_shapes = True

    def __init__(self, *, arch: str = cuda_build.DEFAULT_ARCH, gemv: str = cuda_weight_only.DEFAULT_GEMV):
        """arch: the GPU architecture the cubin is for ('sm_90a': H100/H200; 'sm_80': A100; ...).
        gemv: the kernel of decode-shaped weight-only Linear layers: 'tensor_cores', 'cuda_cores', or
        'auto' (tensor cores where the layer's K and group size are multiples of the mma's K step;
        cuda_weight_only.py)."""
        self.target = cuda_build.target(arch)
        self.gemv = cuda_weight_only.check_gemv(gemv)
        self._builds = Path(tempfile.mkdtemp(prefix="qcompile-cuda-"))

    def build(self, gm: fx.GraphModule) -> CudaRunner:
        cuda_build.nvcc()  # before lowering: a missing compiler is the first thing to say
        with cuda_weight_only.gemv_kernel(self.gemv):
            before, grouped = group(to_relax(gm, target=self.target))
        sites = profile.call_sites(before, grouped, profile.layer_names(gm))
        directory = self._builds / f"model-{len(list(self._builds.iterdir()))}"
        executable, kernels = compile_module(schedule(grouped, self.target), self.target, directory)
        return CudaRunner(executable, sites, kernels)

    def load(self, directory: Path, gm: fx.GraphModule) -> CudaRunner:
        library = Path(directory) / LIBRARY
        if not library.is_file():
            from ...serialize import ArtifactError

            raise ArtifactError(f"{directory} has no {LIBRARY}: it was not saved by the CUDA backend")
        cuda_runtime.load_runtime()
        sources = Path(directory) / KERNEL_SOURCES
        kernels = cuda_build.KernelBuild(sources) if sources.is_dir() else None
        return CudaRunner(tvm.runtime.load_module(str(library)), profile.load_sites(Path(directory) / KERNELS), kernels)
