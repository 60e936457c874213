"""The CPU targets' (x86, arm) pipeline: the hand-written kernels their ISAs have (the GEMM of linears and
ungrouped convs, the depthwise conv, the activation matmul; isa.py says which ISA gets which) and the
fused-kernel schedule rule for everything else."""
from __future__ import annotations

import functools

import tvm
from torch import fx
from tvm.s_tir import dlight

from ..pipeline import fuse, group
from ..relax_lowering import KernelLowering, to_relax
from . import depthwise_lowering, gemm_lowering, matmul_lowering
from .fused_kernel_rule import FusedIntegerKernel
from .gemm_lowering import ChooseTiling, default_tiling
from .tuning import Tuner


def lowerings(choose_tiling: ChooseTiling = default_tiling) -> tuple[KernelLowering, ...]:
    """The CPU kernels, the GEMM's register tile chosen by `choose_tiling` (the cost model's unless tuning)."""
    return (KernelLowering(gemm_lowering.plan, functools.partial(gemm_lowering.emit, choose_tiling=choose_tiling)),
            KernelLowering(depthwise_lowering.plan, depthwise_lowering.emit),
            KernelLowering(matmul_lowering.plan, matmul_lowering.emit))


def lower(gm: fx.GraphModule, target: tvm.target.Target, choose_tiling: ChooseTiling = default_tiling) -> tvm.IRModule:
    """The integer graph as a Relax module, with the CPU kernels `target`'s ISA has."""
    return to_relax(gm, target=target, lowerings=lowerings(choose_tiling))


def schedule(grouped: tvm.IRModule, target: tvm.target.Target, tuner: Tuner | None = None) -> tvm.IRModule:
    """Turn each group into one kernel and schedule every kernel (with the tuner's knobs, if tuning)."""
    mod = fuse(grouped)
    rule = tuner.rule(mod) if tuner else FusedIntegerKernel()
    with target:
        return dlight.ApplyDefaultSchedule(rule)(mod)


def optimize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """A lowered module grouped, fused and scheduled for a CPU target."""
    return schedule(group(mod)[1], target)
