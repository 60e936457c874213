"""int4-weight GEMM vs the int8 GEMM, side by side: the same TVM x86 kernel (x86_gemm.py) with its weights
packed two per byte (INT4_WEIGHTS, unpacked in registers) or one per byte (INT8_WEIGHTS).

    python bench/x86/gemm_int4.py                 # exactness check, then the timing table
    python bench/x86/gemm_int4.py --shapes 1x4096x4096 --rounds 50

Both kernels get the same int4-range weights and the same tile (the cost model's pick for the shape), are
checked bit-exact against the int64 reference, and are timed interleaved in one process (gemm_int8.py's
time_interleaved: one sample of each per round, rotating order). The ratio column is int8 time / int4 time
(> 1: int4 faster), from the medians and from the minima; on a shared machine only ratios mean anything.
Where int4 should win: memory-bound shapes (small M, a weight matrix larger than the caches), where the
kernel streams half the weight bytes. Where M is large the weights are reused from cache and the extra
unpack instructions cost a little.
"""
from __future__ import annotations

import os

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "2000")

import argparse  # noqa: E402

import torch  # noqa: E402
from gemm_int8 import REQUANT, time_interleaved  # noqa: E402  (bench/ is on sys.path when run as a script)

from qcompile.backends.tvm.cpu import gemm_kernel as G
from qcompile.backends.tvm.cpu.isa import Isa, host_target, isa_for
from qcompile.backends.tvm.cpu.tiling import choose_tiling

# M, N, K: GEMV / decode-sized rows over 32 MiB, 16 MiB and 1.25 MiB (int8) of weights, small batches,
# and two compute-bound shapes.
SHAPES = [(1, 8192, 4096), (1, 4096, 4096), (1, 1000, 1280), (4, 4096, 4096), (16, 4096, 4096),
          (256, 256, 1024), (1024, 1024, 1024)]
CHECK_SHAPES = [(1, 1, 1), (13, 17, 31), (7, 33, 65), (29, 50, 9), (100, 129, 257)]  # K % 8, N odd


def int4_problem(m: int, n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
    a[0], w[0] = 255, -8  # the extreme products
    bias = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=g)
    mult = torch.randint(2**20, 2**31 - 1, (n,), dtype=torch.int32, generator=g)
    return a, w, bias, mult


def check_exact(target: dict, isa: Isa) -> None:
    cases = 0
    for m, n, k in CHECK_SHAPES:
        a, w, bias, mult = int4_problem(m + 3, n, k, seed=m * n + k)
        for rq in (None, REQUANT):
            mul = None if rq is None else mult
            kernel = G.build_gemm(m, w, bias, mul, rq, target=target, isa=isa, weights=G.INT4_WEIGHTS)
            for rows in sorted({1, m, m + 3}):
                if not torch.equal(kernel(a[:rows]), G.reference_gemm(a[:rows], w, bias, mul, rq)):
                    raise AssertionError(f"int4 mismatch: M={rows} N={n} K={k} requant={rq}")
                cases += 1
    print(f"exact (int4 weights, {isa.name}): {cases} cases bit-identical to the int64 reference, shapes {CHECK_SHAPES}")


def kernels(m: int, n: int, k: int, target: dict, isa: Isa) -> dict:
    a, w, bias, mult = int4_problem(m, n, k)
    tiling = choose_tiling(isa, m, n, k)
    out = {fmt: torch.empty(m, n, dtype=torch.uint8) for fmt in ("int8", "int4")}
    built = {fmt.name: G.build_gemm(m, w, bias, mult, REQUANT, target=target, isa=isa, tiling=tiling, weights=fmt)
             for fmt in (G.INT8_WEIGHTS, G.INT4_WEIGHTS)}
    for name, kernel in built.items():
        kernel.run(a, out[name])
    if not torch.equal(out["int8"], out["int4"]):
        raise AssertionError(f"int4 and int8 kernels disagree at {m}x{n}x{k}")
    return {f"{name} weights": (lambda kernel=kernel, name=name: kernel.run(a, out[name])) for name, kernel in built.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shapes", nargs="*", help="MxNxK, default: the benchmark shapes")
    parser.add_argument("--no-check", action="store_true", help="skip the exactness check")
    args = parser.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    target = host_target()
    isa = isa_for(target)
    if not G.INT4_WEIGHTS.supports(isa):
        raise SystemExit(f"the int4-weight kernel needs AVX512-VNNI; this CPU's best is {isa.name}")
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes] if args.shapes else SHAPES
    print(f"target {target}, {args.threads} threads, median (min) of {args.rounds} interleaved rounds")
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    if not args.no_check:
        check_exact(target, isa)
    print(f"{'M x N x K':>16} {'tile':>6} {'int8 ms':>9} {'int4 ms':>9} {'int8/int4 (median)':>19} {'(min)':>7}")
    for m, n, k in shapes:
        stats = time_interleaved(kernels(m, n, k, target, isa), args.rounds)
        (t8, b8), (t4, b4) = stats["int8 weights"], stats["int4 weights"]
        tiling = choose_tiling(isa, m, n, k)
        print(f"{f'{m}x{n}x{k}':>16} {f'{tiling.mr}x{tiling.nr}':>6} {t8 * 1e3:9.3f} {t4 * 1e3:9.3f} "
              f"{t8 / t4:18.2f}x {b8 / b4:6.2f}x")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
