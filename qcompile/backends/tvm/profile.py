"""Where a built TVM model spends its time, kernel by kernel, mapped back to the layers of the fx graph.

The kernels are timed inside one real run of the Relax VM (its instrument hook fires around every
call), so each time includes the real data layout, cache state and thread-pool wake-up of that call.
Which layers a kernel computes comes from the variable names the lowering gives (var_names.py): each
fused call is matched back to the bindings it replaced in the module before FuseOps (call_sites).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

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


def save_sites(sites: list[CallSite], path: Path) -> None:
    path.write_text(json.dumps([{"kernel": s.kernel, "layers": list(s.layers)} for s in sites]))


def load_sites(path: Path) -> list[CallSite]:
    """The call sites saved beside a library; none for artifacts saved before they were."""
    return [CallSite(s["kernel"], tuple(s["layers"])) for s in json.loads(path.read_text())] if path.is_file() else []


def layer_names(gm: fx.GraphModule) -> dict[str, str]:
    """fx node name -> the name its report row uses (the float-graph node it stands for)."""
    return {n.name: meta.origin(n) or n.name for n in gm.graph.nodes}


def _bindings(func: relax.Function):
    return [b for block in func.body.blocks for b in block.bindings]


def _key(callee, args, env: dict) -> tuple:
    """A call_tir's identity: its PrimFunc and the (pre-fusion) objects it reads."""
    return (callee.name_hint, *(hash(env.get(hash(a), a)) for a in args))


def _is_call_tir(value) -> bool:
    return isinstance(value, relax.Call) and value.op.same_as(_CALL_TIR)


def call_sites(before: tvm.IRModule, grouped: tvm.IRModule, layers: dict[str, str]) -> list[CallSite]:
    """Every kernel call of `main` in `grouped` (FuseOps applied to `before`, FuseTIR not yet), with
    the layers it computes. FuseOps shares one fused function among structurally equal groups, so
    each grouped call is replayed on the module before fusion: every binding inside the fused function
    is matched, through the objects it reads, to the binding it was, whose name says its fx node."""
    origin = {_key(b.value.args[0], b.value.args[1].fields, {}): b.var for b in _bindings(before["main"]) if _is_call_tir(b.value)}
    env: dict[int, object] = {}  # hash of a grouped-module var -> the pre-fusion var it stands for
    sites = []
    for b in _bindings(grouped["main"]):
        call = b.value
        if _is_call_tir(call):
            kernel, pre = call.args[0].name_hint, [origin.get(_key(call.args[0], call.args[1].fields, env))]
        elif isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.GlobalVar):
            kernel, pre = call.op.name_hint, _replay(grouped[call.op], call.args, env, origin)
        else:
            continue  # a Relax op the VM runs as a builtin
        if pre[-1] is not None:
            env[hash(b.var)] = pre[-1]
        nodes = [node_of_var(v.name) for v in pre if v is not None]
        sites.append(CallSite(kernel, tuple(dict.fromkeys(layers[n] for n in nodes if n in layers))))
    return sites


def _replay(fused: relax.Function, args, env: dict, origin: dict) -> list:
    """The pre-fusion var of every binding inside `fused` when called with `args` (None if unmatched)."""
    inner = {hash(p): env.get(hash(a), a) for p, a in zip(fused.params, args)}
    pre = []
    for b in _bindings(fused):
        v = origin.get(_key(b.value.args[0], b.value.args[1].fields, inner)) if _is_call_tir(b.value) else None
        if v is not None:
            inner[hash(b.var)] = v
        pre.append(v)
    return pre


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


@dataclass(frozen=True)
class BenchmarkResult:
    """Time of one whole call of the model, measured on the device by TVM's time evaluator."""

    device: str
    median_ms: float
    mean_ms: float
    std_ms: float
    repeat: int
    number: int
    emulated: bool = False

    def __str__(self) -> str:
        text = (f"{self.median_ms:.3f} ms median ({self.mean_ms:.3f} mean, {self.std_ms:.3f} std) over "
                f"{self.repeat}x{self.number} calls on {self.device}")
        if self.emulated:
            text += " -- an emulated device: these times say nothing about a real board"
        return text

    @classmethod
    def of(cls, device: str, seconds: list[float], number: int, emulated: bool = False) -> "BenchmarkResult":
        """From the seconds per call of each round of `number` calls."""
        ms = [t * 1e3 for t in seconds]
        std = statistics.pstdev(ms) if len(ms) > 1 else 0.0
        return cls(device, statistics.median(ms), statistics.fmean(ms), std, len(ms), number, emulated)


def time_vm(vm: relax.VirtualMachine, dev, args: list, *, number: int, repeat: int, where: str,
            emulated: bool = False) -> BenchmarkResult:
    """Whole-model time by the VM's own evaluator (on the device itself: RPC round trips are not counted)."""
    vm.set_input("main", *args)
    result = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)("main")
    return BenchmarkResult.of(where, list(result.results), number, emulated)


def profile(vm: relax.VirtualMachine, sites: list[CallSite], inputs: list[torch.Tensor]) -> list[dict]:
    """One entry per kernel call: kernel name, the layers it computes, median µs."""
    timed = time_kernels(vm, inputs)
    return [{"kernel": k, "layers": list(layers), "us": us} for (k, us), layers in zip(timed, align(timed, sites))]


def align(timed: list[tuple[str, float]], sites: list[CallSite]) -> list[tuple[str, ...]]:
    """The layers of each timed call. The build turns some planned kernels into VM builtins (a reshape
    becomes a view), so the planned calls are matched to the timed ones in order, skipping those."""
    layers, i = [], 0
    for kernel, _ in timed:
        j = next((j for j in range(i, len(sites)) if sites[j].kernel == kernel), None)
        layers.append(sites[j].layers if j is not None else ())
        i = i if j is None else j + 1
    return layers
