"""Which kernel of a target="cuda" model computes something else than its definition: the model runs on the
CPU emulator of the CUDA kernels with every kernel call's buffers recorded (the Relax VM's instrument); each
call is then replayed on this CPU through the same function unscheduled (after FuseTIR, built for llvm), from
the recorded inputs, and its outputs compared.

    .venv/bin/python tools/cuda_kernel_diff.py CASE      # a case of tests/backends/tvm/cuda/cases.py

Prints, per call, the largest difference of each buffer (inf positions must agree; NaN counts as equal);
exits 1 if any call differs by more than the case's bound. How the sdpa boolean-mask bug was found: every
call matched except the masked matmul, whose output had -inf in other places."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _difference(a: np.ndarray, b: np.ndarray) -> float:
    if a.dtype == bool or b.dtype == bool:
        return float(np.count_nonzero(a != b))
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not np.array_equal(np.isinf(a) & (a > 0), np.isinf(b) & (b > 0)) or not np.array_equal(np.isinf(a) & (a < 0), np.isinf(b) & (b < 0)):
        return float("inf")
    finite = np.isfinite(a) & np.isfinite(b)
    return float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0


def recorded_calls(cm, example) -> list[tuple[str, list]]:
    """(function, buffers after the call) of every kernel call of `cm` (target="cuda") on `example`, emulated."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from qcompile.backends.tvm.cuda.emulator.kernels import (
        emulated_gpu,
        register_kernels,
    )

    calls = []

    def instrument(func, symbol, before_run, ret, *args):
        if not before_run and not symbol.startswith("vm."):
            calls.append((symbol, [a.numpy() if hasattr(a, "numpy") else a for a in args]))
        return 0

    with emulated_gpu():
        register_kernels(cm._runner.kernels.directory)
        vm = VirtualMachine(cm._runner.executable, tvm.cuda(0))
        vm.set_instrument(instrument)
        vm["main"](*[tvm.runtime.tensor(t.numpy(), tvm.cuda(0)) for t in example])
    return calls


def main(argv=None) -> int:
    import tvm
    from tvm import relax

    from qcompile.backends.tvm.cuda import nvcc_build
    from qcompile.backends.tvm.cuda import pipeline as cuda_pipeline
    from qcompile.backends.tvm.pipeline import group
    from tests.backends.tvm.cuda.cases import compiled, gpu_cases

    names = sys.argv[1:] if argv is None else argv
    cases = {c.name: c for c in gpu_cases()}
    if len(names) != 1 or names[0] not in cases:
        print(f"usage: cuda_kernel_diff.py CASE, one of {sorted(cases)}")
        return 2
    case = cases[names[0]]
    cm = compiled(case, "cuda", **case.gpu_options)
    _, grouped = group(cuda_pipeline.lower(cm.graph_module, nvcc_build.target()))
    unscheduled = tvm.transform.Sequential([relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()])(grouped)
    worst = 0.0
    for symbol, buffers in recorded_calls(cm, case.example):
        if symbol not in unscheduled:
            continue
        func = unscheduled[symbol].with_attr("global_symbol", "main")
        replay = [tvm.runtime.tensor(b.copy()) if isinstance(b, np.ndarray) else b for b in buffers]
        tvm.compile(tvm.IRModule({"main": func}), target="llvm")["main"](*replay)
        differences = [_difference(r.numpy(), b) if isinstance(b, np.ndarray) else 0.0 for r, b in zip(replay, buffers)]
        worst = max(worst, *differences)
        print(f"{symbol:60} {' '.join(f'{d:.2g}' for d in differences)}", flush=True)
    print(f"largest difference {worst:.2g} (the case's bound {case.atol:.0e})")
    return 1 if worst > case.atol else 0


if __name__ == "__main__":
    sys.exit(main())
