"""The CUDA target's pipeline: its hand-written lowerings (ungrouped convs with [cout, kh, kw, cin] weights,
activation matmuls, weight-only GEMVs), the schedule rules tried on each kernel, and the build with nvcc."""
from __future__ import annotations

from pathlib import Path

import tvm
from torch import fx
from tvm import relax
from tvm.s_tir import dlight

from ..pipeline import fuse
from ..relax_lowering import KernelLowering, to_relax
from . import (
    conv_lowering,
    depthwise_rule,
    fp16_gemm_rule,
    gemm_rule,
    matmul_lowering,
    nvcc_build,
    weight_only_lowering,
)

LOWERINGS = tuple(KernelLowering(m.plan, m.emit) for m in (conv_lowering, matmul_lowering, weight_only_lowering))


def lower(gm: fx.GraphModule, target: tvm.target.Target) -> tvm.IRModule:
    """The integer graph as a Relax module, with the CUDA kernels. Scans and sorts (cumsum in transformers'
    mask code) take TVM's GPU kernels: LegalizeOps leaves them to this dispatch on a GPU target."""
    mod = to_relax(gm, target=target, lowerings=LOWERINGS)
    with target:
        return relax.backend.DispatchSortScan()(mod)


def gpu_rules(gemm_tile: gemm_rule.GemmTile | None = None) -> list:
    """Schedule rules, tried in order on each kernel (`gemm_tile`: one block tile for every GEMM)."""
    return [gemm_rule.TensorCoreGemm(gemm_tile), depthwise_rule.DepthwiseConv(), fp16_gemm_rule.Float16TensorCoreGemm(),
            dlight.gpu.Matmul(), dlight.gpu.GEMV(),
            dlight.gpu.LowBatchGEMV(), dlight.gpu.Reduction(), dlight.gpu.GeneralReduction(), dlight.gpu.Fallback()]


def apply_rules(mod: tvm.IRModule, target: tvm.target.Target, gemm_tile: gemm_rule.GemmTile | None = None) -> tvm.IRModule:
    """Every kernel of `mod` scheduled by the first of gpu_rules() that takes it."""
    with target:
        return dlight.ApplyDefaultSchedule(*gpu_rules(gemm_tile))(mod)


def schedule(grouped: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Turn each group into one kernel and schedule every kernel for the GPU."""
    return apply_rules(fuse(grouped), target)


def _lowering(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CUDA Relax pipeline without its legalize-fuse-schedule stage, which schedule() has done: run
    again, it fused a view reshape with its neighbour into a new kernel no rule scheduled, and that kernel
    was compiled for the host, reading device memory from the CPU (a segfault on the GPU machine)."""
    from tvm.relax.backend.cuda import pipeline as tvm_pipeline

    @tvm.transform.module_pass(opt_level=0)
    def lower(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            passes = tvm_pipeline.dataflow_lower_passes(target) + tvm_pipeline.finalize_passes(target)
            return tvm.transform.Sequential(passes)(mod)

    return lower


def compile_module(mod: tvm.IRModule, target: tvm.target.Target, directory: Path):
    """(executable, KernelBuild): the scheduled module built with its cubin compiled by nvcc for the
    target's arch, the kernels' source, PTX and ptxas report kept in `directory`."""
    with nvcc_build.nvcc_compiles(str(target.attrs["arch"]), directory) as kernels, \
            tvm.transform.PassContext(config=gemm_rule.PASS_CONFIG):
        return tvm.compile(mod, target=target, relax_pipeline=_lowering(target)), kernels
