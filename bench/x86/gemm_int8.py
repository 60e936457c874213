"""Int8 GEMM side by side: qcompile's TVM x86 kernel vs PyTorch fbgemm int8 and fp32 linear.

    python bench/x86/gemm_int8.py            # exactness check, then the timing table
    python bench/x86/gemm_int8.py --rounds 50 --shapes 1024x1024x1024

All implementations run in the same process with the same thread count, interleaved round by round
(one sample of each per round, in a rotating order), so that load from other processes hits them alike;
the table reports the median (and the minimum) over the rounds. GOPS counts 2*M*N*K operations, the
last column is fbgemm's median time over the row's. The TVM kernels write into preallocated outputs;
the torch calls allocate theirs (they have no out= form). fbgemm's AVX2 kernel saturates int16 pair sums
(vpmaddubsw), so on full-range uint8 data like this its results are not exact; the TVM kernel's are.
The system load average is printed before and after: other processes skew the numbers, a lot on 2 cores.

Two thread pools share the cores here: TVM's and PyTorch's OpenMP (libgomp). Both busy-wait after a
parallel region: libgomp for a few milliseconds (GOMP_SPINCOUNT), TVM for 300000 sched_yield calls
(a large fraction of a second), so interleaved, idle spinners steal the cores from the other runtime.
Hence TVM's spin is capped (TVM_THREAD_POOL_SPIN_COUNT, still far longer than the gaps between calls
inside a sample; read when TVM starts its pool, so set before importing), each sample begins with an
untimed call, and samples are separated by a pause long enough for libgomp's spinners to park.
"""
from __future__ import annotations

import os

os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "2000")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from qcompile.backends.tvm.cpu import gemm_kernel as G
from qcompile.backends.tvm.cpu.isa import (
    AVX2,
    AVX512_VNNI,
    AVX512_VNNI_EMULATED,
    Isa,
    host_target,
    isa_for,
)

SHAPES = [(1024, 1024, 1024), (256, 256, 1024), (3136, 144, 24), (196, 960, 160)]  # M, N, K
# Odd sizes (N, K not multiples of the tile / word widths) for the exactness check.
CHECK_SHAPES = [(1, 1, 1), (7, 33, 65), (13, 17, 31), (100, 129, 257), (3136, 144, 24), (196, 960, 160)]
REQUANT = G.Requant(shift=38, out_zp=128, qmin=0, qmax=255)
ISAS = {"avx2": AVX2, "avx512-vnni": AVX512_VNNI}
FBGEMM_ISA = {"avx2": "AVX2"}  # fbgemm's FBGEMM_ENABLE_INSTRUCTIONS value for the same instruction set


def random_problem(m: int, n: int, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    w[0] = -128  # an extreme column: catches any saturating (vpmaddubsw-like) inner product
    a[0] = 255
    bias = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=g)
    mult = torch.randint(2**20, 2**31 - 1, (n,), dtype=torch.int32, generator=g)
    return a, w, bias, mult


def check_exact(target: dict, isa: Isa) -> None:
    """Kernel vs the torch int64 reference, both output modes, several M per build (M is dynamic)."""
    requants = [None, REQUANT, G.Requant(shift=1, out_zp=0), G.Requant(shift=31, out_zp=3, qmin=2, qmax=250),
                G.Requant(shift=32, out_zp=128), G.Requant(shift=62, out_zp=-5, qmin=-128, qmax=127, out_dtype="int8")]
    cases = 0
    for m, n, k in CHECK_SHAPES:
        a, w, bias, mult = random_problem(m + 7, n, k, seed=m * n + k)
        for rq in requants:
            mul = None if rq is None else mult
            kernel = G.build_gemm(m, w, bias, mul, rq, target=target, isa=isa)
            for rows in sorted({1, m, m + 7}):
                got, want = kernel(a[:rows]), G.reference_gemm(a[:rows], w, bias, mul, rq)
                if not torch.equal(got, want):
                    raise AssertionError(f"{isa.name} mismatch: M={rows} N={n} K={k} requant={rq}")
                cases += 1
    print(f"exact ({isa.name}): {cases} cases bit-identical to the int64 reference, shapes {CHECK_SHAPES}")


def simd_summary(kernel: G.GemmKernel) -> str:
    asm = kernel.assembly()
    names = ["vpmaddwd", "vpdpbusd", "vpmaddubsw", "vpbroadcastd", "vpmuldq"]
    found = [f"{x} x{asm.count(x + ' ') + asm.count(x + chr(9))}" for x in names if x in asm]
    return ", ".join(found) or "no SIMD dot-product instructions"


def implementations(m: int, n: int, k: int, target: dict, isa: Isa):
    """name -> zero-argument callable; every callable writes/returns the full [M, N] result."""
    a, w, bias, mult = random_problem(m, n, k)
    fused = G.build_gemm(m, w, bias, mult, REQUANT, target=target, isa=isa)
    acc_only = G.build_gemm(m, w, bias, target=target, isa=isa)
    out_u8 = torch.empty(m, n, dtype=torch.uint8)
    out_i32 = torch.empty(m, n, dtype=torch.int32)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensor constructors are deprecated in torch 2.13
        xq = torch._make_per_tensor_quantized_tensor(a, 0.02, 128)
        wq = torch._make_per_channel_quantized_tensor(
            w, torch.full((n,), 0.01, dtype=torch.double), torch.zeros(n, dtype=torch.long), 0)
    packed = torch.ops.quantized.linear_prepack(wq, bias.float() * 2e-4)
    x32, w32, b32 = a.float(), w.float(), bias.float()

    impls = {
        "tvm int8 + requant": lambda: fused.run(a, out_u8),
        "tvm int8 acc only": lambda: acc_only.run(a, out_i32),
        "fbgemm int8 linear": lambda: torch.ops.quantized.linear(xq, packed, 0.5, 128),
        "torch fp32 linear": lambda: torch.nn.functional.linear(x32, w32, b32),
    }
    return impls, fused


def time_interleaved(impls: dict, rounds: int, sample_s: float = 10e-3, pause_s: float = 10e-3) -> dict:
    """name -> (median, min) seconds per call over `rounds` samples, one sample of each per round.

    A sample is one untimed call (wakes that runtime's threads) and then enough timed calls to last
    about sample_s; samples are separated by pause_s so the previous runtime's spinning threads park.
    """
    reps = {}
    for name, fn in impls.items():
        fn()  # first-call allocations, thread pool start
        t0 = time.perf_counter()
        fn()
        reps[name] = max(1, round(sample_s / max(time.perf_counter() - t0, 1e-7)))
    samples = {name: [] for name in impls}
    names = list(impls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            fn, n = impls[name], reps[name]
            time.sleep(pause_s)
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: (statistics.median(s), min(s)) for name, s in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shapes", nargs="*", help="MxNxK, default: the four benchmark shapes")
    parser.add_argument("--no-check", action="store_true", help="skip the exactness check")
    parser.add_argument("--isa", choices=sorted(ISAS), help="kernel ISA (default: the best the host has); "
                        "avx2 also restricts fbgemm to its AVX2 kernels, for an AVX2-vs-AVX2 comparison")
    parser.add_argument("--mcpu", help="compile for this LLVM CPU instead of the host's, e.g. znver3 "
                        "(on a newer host, LLVM would otherwise fuse the AVX2 kernel's vpmaddwd + vpaddd into VNNI)")
    args = parser.parse_args()
    if args.isa in FBGEMM_ISA:
        # Read by fbgemm when it first picks its kernels, i.e. at the first quantized op below.
        os.environ["FBGEMM_ENABLE_INSTRUCTIONS"] = FBGEMM_ISA[args.isa]

    # Same thread count for everyone: TVM's pool reads TVM_NUM_THREADS when it first starts.
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    torch.backends.quantized.engine = "fbgemm"
    target = host_target() | ({"mcpu": args.mcpu} if args.mcpu else {})
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes] if args.shapes else SHAPES

    isa = ISAS[args.isa] if args.isa else isa_for(target)
    print(f"target {target}, kernel ISA {isa.name}, {args.threads} threads, "
          f"torch {torch.__version__}, median of {args.rounds} interleaved rounds, "
          f"TVM_THREAD_POOL_SPIN_COUNT={os.environ['TVM_THREAD_POOL_SPIN_COUNT']}, "
          f"FBGEMM_ENABLE_INSTRUCTIONS={os.environ.get('FBGEMM_ENABLE_INSTRUCTIONS', '(unset)')}")
    print("load average before: %.2f %.2f %.2f" % os.getloadavg())
    if not args.no_check:
        check_exact(target, isa)
        if isa is not AVX512_VNNI:  # the VNNI kernel with vpdpbusd emulated: all but that instruction
            check_exact(target, AVX512_VNNI_EMULATED)

    header = (f"{'M x N x K':>16}  {'implementation':<20} {'median ms':>10} {'min ms':>8} {'GOPS':>8} "
              f"{'speed vs fbgemm':>16}")
    rows = []
    for m, n, k in shapes:
        impls, fused = implementations(m, n, k, target, isa)
        if not rows:
            print(f"asm of the fused kernel: {simd_summary(fused)}")
        stats = time_interleaved(impls, args.rounds)
        fbgemm = stats["fbgemm int8 linear"][0]
        for name, (sec, best) in stats.items():
            rows.append(f"{f'{m}x{n}x{k}':>16}  {name:<20} {sec * 1e3:10.3f} {best * 1e3:8.3f} "
                        f"{2 * m * n * k / sec / 1e9:8.1f} {fbgemm / sec:15.2f}x")
        rows.append("")
    print(header, *rows, sep="\n")
    print("load average after: %.2f %.2f %.2f" % os.getloadavg())


if __name__ == "__main__":
    main()
