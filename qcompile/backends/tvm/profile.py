"""Where a built TVM model spends its time, kernel by kernel, mapped back to the layers of the fx graph.

The kernels are timed inside one real run of the Relax VM (its instrument hook fires around every
call), so each time includes the real data layout, cache state and thread-pool wake-up of that call.
Which layers a kernel computes is read from the grouped module (after FuseOps): the bindings inside
each fused function keep the variable names the lowering gave them (var_names.py).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import tvm
from torch import fx
from tvm import relax

from ...ir import meta
from .var_names import node_of_var

_CALL_TIR = tvm.ir.Op.get("relax.call_tir")
_BUILTIN = "vm.builtin."  # allocation and shape checks: VM bookkeeping, not kernels


@dataclass(frozen=True)
class CallSite:
    """One kernel call of `main`, in execution order, and the report layers whose values it computes."""

    kernel: str
    layers: tuple[str, ...]


def layer_names(gm: fx.GraphModule) -> dict[str, str]:
    """fx node name -> the name its report row uses (the float-graph node it stands for)."""
    return {n.name: meta.origin(n) or n.name for n in gm.graph.nodes}


def _bound_names(call: relax.Call, mod: tvm.IRModule) -> list[str]:
    if call.op.same_as(_CALL_TIR):
        return []
    fused = mod[call.op]
    return [b.var.name for block in fused.body.blocks for b in block.bindings]


def call_sites(grouped: tvm.IRModule, layers: dict[str, str]) -> list[CallSite]:
    """Every kernel call of the grouped module's `main` (FuseOps applied, FuseTIR not yet)."""
    sites = []
    for block in grouped["main"].body.blocks:
        for b in block.bindings:
            call = b.value
            if not isinstance(call, relax.Call):
                continue
            if call.op.same_as(_CALL_TIR):
                kernel = call.args[0].name_hint
            elif isinstance(call.op, tvm.ir.GlobalVar):
                kernel = call.op.name_hint
            else:
                continue  # a Relax op the VM runs as a builtin
            names = [b.var.name, *_bound_names(call, grouped)]
            nodes = [node_of_var(n) for n in names]
            found = dict.fromkeys(layers[n] for n in nodes if n in layers)
            sites.append(CallSite(kernel, tuple(found)))
    return sites


def _one_run(vm: relax.VirtualMachine, args: list) -> list[tuple[str, float]]:
    calls: list[tuple[str, float]] = []
    started: list[float] = []

    def instrument(func, symbol, before, ret, *call_args):
        now = time.perf_counter()
        if symbol.startswith(_BUILTIN):
            return 0
        if before:
            started.append(now)
        else:
            calls.append((symbol, now - started.pop()))
        return 0  # VMInstrumentReturnKind.NO_OP: run the call as usual

    vm.set_instrument(instrument)
    vm["main"](*args)
    return calls


def time_kernels(vm: relax.VirtualMachine, inputs: list[torch.Tensor], runs: int = 7) -> list[tuple[str, float]]:
    """(kernel, median µs) of every kernel call of `main`, in call order, over `runs` runs after a warm-up."""
    args = [tvm.runtime.from_dlpack(t.contiguous()) for t in inputs]
    vm["main"](*args)
    samples = [_one_run(vm, args) for _ in range(runs)]
    vm.set_instrument(None)
    return [(calls[0][0], statistics.median(c[1] for c in calls) * 1e6) for calls in zip(*samples)]


def profile(vm: relax.VirtualMachine, sites: list[CallSite], inputs: list[torch.Tensor]) -> list[dict]:
    """One entry per kernel call: kernel name, the layers it computes, median µs."""
    timed = time_kernels(vm, inputs)
    return [{"kernel": k, "layers": list(layers), "us": us} for (k, us), layers in zip(timed, _align(timed, sites))]


def _align(timed: list[tuple[str, float]], sites: list[CallSite]) -> list[tuple[str, ...]]:
    """The layers of each timed call. The build turns some planned kernels into VM builtins (a reshape
    becomes a view), so the planned calls are matched to the timed ones in order, skipping those."""
    layers, i = [], 0
    for kernel, _ in timed:
        j = next((j for j in range(i, len(sites)) if sites[j].kernel == kernel), None)
        layers.append(sites[j].layers if j is not None else ())
        i = i if j is None else j + 1
    return layers
