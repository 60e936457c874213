"""Where the x86 backend's time goes: every kernel of MobileNetV2's TVM module timed alone, grouped by kind.

    .venv/bin/python bench/x86_kernels.py

Each call site of the Relax `main` function is timed with TVM's time_evaluator on zero tensors of its
shapes (kernels are data-independent), so the sum approximates one inference without VM overhead.
"""
from __future__ import annotations

import collections
import datetime
import warnings

import numpy as np
import torch
import tvm
from tvm import relax

import qcompile
from qcompile.backends.tvm.lower import to_relax
from qcompile.backends.tvm.x86 import host_target, optimize
from qcompile.zoo.evaluate import mobilenet_setup

_KINDS = (("gemm", "pointwise conv / linear (GEMM kernel)"), ("transpose", "layout transposes"),
          ("reshape", "layout transposes"), ("conv", "3x3 depthwise + stem conv"), ("add", "residual add"))


def kind_of(name: str) -> str:
    return next((label for key, label in _KINDS if key in name), name)


def call_sites(mod: tvm.IRModule):
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and len(v.args) == 2 and isinstance(v.args[0], tvm.ir.GlobalVar):
                yield v.args[0], list(v.args[1].fields), b.var.ty


def _zeros(ty, dev):
    shape = [int(s) for s in ty.shape.values]
    return tvm.runtime.tensor(np.zeros(shape, dtype=str(ty.dtype)), dev)


def main() -> None:
    warnings.filterwarnings("ignore")
    model, example, calibration, *_ = mobilenet_setup()
    cm = qcompile.compile(model, example, calibration=calibration[:8], progress=False)
    target = host_target()
    mod = optimize(to_relax(cm.graph_module, target=target), target)
    dev, times, totals = tvm.cpu(), {}, collections.defaultdict(float)
    for gv, ins, out_ty in call_sites(mod):
        if gv.name_hint not in times:
            lib = tvm.compile(tvm.IRModule({"main": mod[gv].with_attr("global_symbol", "main")}), target=target)
            args = [_zeros(a.ty, dev) for a in ins] + [_zeros(out_ty, dev)]
            times[gv.name_hint] = lib.mod.time_evaluator("main", dev, number=10, repeat=3)(*args).median * 1e3
        totals[kind_of(gv.name_hint)] += times[gv.name_hint]
    print(f"{datetime.date.today()}, {target}")
    total = sum(totals.values())
    for kind, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<45} {ms:7.2f} ms  {100 * ms / total:5.1f}%")
    print(f"  {'sum of kernels':<45} {total:7.2f} ms")


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
