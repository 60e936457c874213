"""qcompile's x86 GEMM kernel on MobileNetV2's GEMM shapes (pointwise convs as pixels x Cin x Cout, batch 1,
and the classifier linear), one row per shape and their sum.

    python bench/x86/gemm_shapes.py                     # the kernel of this checkout
    python bench/x86/gemm_shapes.py --baseline main     # side by side with x86_gemm.py as of a git revision
    python bench/x86/gemm_shapes.py --isa avx2 --mcpu znver3   # the AVX2 kernel, compiled for Zen 3
    python bench/x86/gemm_shapes.py --baseline main --stat min  # on a loaded machine

Every kernel is built with the tiling build_gemm picks by default (the lowering's choice) and timed on
random full-range data; with --baseline the two kernels of a shape are timed interleaved in the same
process, round by round in alternating order, and the table reports medians (or minima, --stat min).
The baseline module is loaded from `git show REV:qcompile/backends/tvm/cpu/gemm_kernel.py`, so it must have the
same build_gemm interface.
"""
from __future__ import annotations

import os

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "2000")
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from qcompile.backends.tvm.cpu import gemm_kernel
from qcompile.backends.tvm.cpu.isa import host_target

# M (pixels), K (input channels), N (output channels): MobileNetV2's 1x1 convolutions, then the classifier.
SHAPES = [
    (12544, 32, 16), (12544, 16, 96), (3136, 96, 24), (3136, 24, 144), (3136, 144, 24), (784, 144, 32),
    (784, 32, 192), (784, 192, 32), (196, 192, 64), (196, 64, 384), (196, 384, 64), (196, 384, 96),
    (196, 96, 576), (196, 576, 96), (49, 576, 160), (49, 160, 960), (49, 960, 160), (49, 960, 320),
    (49, 320, 1280), (1, 1280, 1000),
]
REQUANT = gemm_kernel.Requant(shift=38, out_zp=128)
ISAS = {"avx2": "AVX2", "avx512-vnni": "AVX512_VNNI"}  # --isa -> the module attribute
# min: the least disturbed sample, steadier than the median when other processes load the cores.
STATS = {"median": statistics.median, "min": min}


def module_at(rev: str):
    """x86_gemm.py as of git revision `rev`, imported as a separate module."""
    root = Path(__file__).resolve().parents[2]
    src = subprocess.run(["git", "show", f"{rev}:qcompile/backends/tvm/cpu/gemm_kernel.py"], cwd=root, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "x86_gemm_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("x86_gemm_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def problem(m: int, k: int, n: int):
    g = torch.Generator().manual_seed(m + k + n)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    bias = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=g)
    mult = torch.randint(2**20, 2**31 - 1, (n,), dtype=torch.int32, generator=g)
    return a, w, bias, mult


def runner(module, m: int, k: int, n: int, isa: str | None, mcpu: str | None):
    """A zero-argument callable running the module's kernel once; checks it against the reference first."""
    a, w, bias, mult = problem(m, k, n)
    target = module.host_target() | ({"mcpu": mcpu} if mcpu else {})
    kernel = module.build_gemm(m, w, bias, mult, module.Requant(**vars(REQUANT)), target=target,
                               isa=getattr(module, ISAS[isa]) if isa else None)
    out = torch.empty(m, n, dtype=torch.uint8)
    kernel.run(a, out)
    if not torch.equal(out, gemm_kernel.reference_gemm(a, w, bias, mult, REQUANT)):
        raise AssertionError(f"{module.__name__} is not exact at M={m} K={k} N={n}")
    return lambda: kernel.run(a, out), kernel.tiling


def sample(fn, seconds: float) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    reps = max(1, round(seconds / max(time.perf_counter() - t0, 1e-7)))
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git revision whose x86_gemm.py to time alongside")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sample-ms", type=float, default=5.0)
    parser.add_argument("--isa", choices=sorted(ISAS), help="kernel ISA (default: the best the host has)")
    parser.add_argument("--mcpu", help="compile for this LLVM CPU instead of the host's, e.g. znver3")
    parser.add_argument("--stat", choices=sorted(STATS), default="median", help="per-shape statistic of the rounds")
    args = parser.parse_args()

    modules = {"this": gemm_kernel}
    if args.baseline:
        modules = {args.baseline: module_at(args.baseline), **modules}
    print(f"target {host_target()}, isa {args.isa or 'host'}, mcpu {args.mcpu or 'host'}, "
          f"TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}, {args.stat} of {args.rounds} interleaved rounds; "
          f"load average {'%.2f %.2f %.2f' % os.getloadavg()}")
    names = list(modules)
    print(f"{'M':>6} {'K':>5} {'N':>5}  " + "  ".join(f"{name + ' us':>14} {'tile':>6}" for name in names)
          + ("  speed-up" if len(names) == 2 else ""))
    totals = dict.fromkeys(names, 0.0)
    for m, k, n in SHAPES:
        built = {name: runner(module, m, k, n, args.isa, args.mcpu) for name, module in modules.items()}
        samples = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % 2:] + names[: r % 2]:
                samples[name].append(sample(built[name][0], args.sample_ms * 1e-3))
        med = {name: STATS[args.stat](s) for name, s in samples.items()}
        for name in names:
            totals[name] += med[name]
        cells = "  ".join(f"{med[x] * 1e6:14.1f} {f'{built[x][1].mr}x{built[x][1].nr}':>6}" for x in names)
        ratio = f"  {med[names[0]] / med[names[1]]:7.2f}x" if len(names) == 2 else ""
        print(f"{m:6d} {k:5d} {n:5d}  {cells}{ratio}", flush=True)
    cells = "  ".join(f"{totals[x] * 1e6:14.1f} {'':>6}" for x in names)
    ratio = f"  {totals[names[0]] / totals[names[1]]:7.2f}x" if len(names) == 2 else ""
    print(f"{'sum':>18}  {cells}{ratio}")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
