"""The int8 tensor-core GEMM of target="cuda" (qcompile/backends/tvm/cuda/gemm_rule.py) alone, against
torch._int_mm (cuBLAS int8) and cuBLAS float16 on the same shapes, in one run on the GPU machine.

    python bench/cuda/gemm.py build OUT    # here (TVM's compiler, no GPU): one library per shape and epilogue
    python bench/cuda/gemm.py run OUT      # there, OUT inside a bundle (tools/cuda_bundle.py puts it at .gpu/gemm)

`build` schedules the same TE definitions a model's linear layer lowers to (ops.py linear_int, with and
without its requantize epilogue: per-channel multipliers, uint8 out) with the model build's rule and
PassContext, and writes OUT/<name>.so and OUT/index.json (registers, spills). `run` makes uint8
activations and int8 weights on the GPU, checks every output exactly against a float64 matmul (exact: |sum|
< 2^53) and the requantized one against the same integer arithmetic in torch, then times the kernel,
torch._int_mm (int8 x int8 -> int32) and torch.matmul in float16 with CUDA events (cuBLAS: the faster of two
weight layouts). TOPS = 2*M*N*K / time.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cuda_device  # noqa: E402  (torch only: runs on both machines)

# (M, N, K): the 4096^3, a transformer FFN at a batch of 64 x 128 tokens, a small-M one.
SHAPES = [(4096, 4096, 4096), (8192, 3072, 768), (128, 4096, 4096)]
# Block tiles timed beside the rule's choice on the 4096^3 int32 kernel: (name, bm, bn, bk, wm, wn, stages).
# Runs 1-9 also timed 8 warps (128x128x64s4, 128x256x64s3, 256x128x64s3, 128x256x64s4): 388-468 TOPS, slower.
TILE_VARIANTS = [("128x128x64w4s3", 128, 128, 64, 2, 2, 3), ("128x128x64w4s4", 128, 128, 64, 2, 2, 4),
                 ("128x128x128w4s4", 128, 128, 128, 2, 2, 4), ("128x128x128s3", 128, 128, 128, 2, 4, 3)]
SHIFT = 43  # requantize: out = clamp(round(acc * mult / 2^SHIFT) + zp), mult in [2^29, 2^30): outputs spread over 0..255
OUT_ZP = 3


def _gemm_func(m: int, n: int, k: int, requantize: bool):
    import torch
    from tvm import te

    from qcompile.backends.tvm.ops import CONVERTERS

    qc = torch.ops.qcompile
    a = te.placeholder((m, k), "uint8", name="a")
    w = te.placeholder((n, k), "int8", name="w")
    acc = CONVERTERS[qc.linear_int.default](None, a, w, None, 0, True)
    if not requantize:
        return te.create_prim_func([a, w, acc])
    bias = te.placeholder((n,), "int32", name="bias")
    mult = te.placeholder((n,), "int32", name="mult")
    biased = te.compute((m, n), lambda i, j: acc[i, j] + bias[j], name="linear_bias")
    out = CONVERTERS[qc.requantize_fixed.default](None, biased, 0, mult, SHIFT, 1, OUT_ZP, 0, 255, torch.uint8)
    return te.create_prim_func([a, w, bias, mult, out])


def build(out: Path) -> None:
    import tvm

    from qcompile.backends.tvm.cuda import nvcc_build, pipeline
    from qcompile.backends.tvm.cuda.gemm_rule import GemmTile

    out.mkdir(parents=True, exist_ok=True)
    target, index = nvcc_build.target(), []

    def kernel(name: str, m: int, n: int, k: int, requantize: bool, tile: GemmTile | None) -> None:
        mod = pipeline.apply_rules(tvm.IRModule({"main": _gemm_func(m, n, k, requantize)}), target, tile)
        lib, kernels = pipeline.compile_module(mod, target, out / "sources" / name)
        lib.export_library(str(out / f"{name}.so"))
        mma = sum(body.count("mma.sync.aligned.m16n8k32") for body in kernels.kernel_ptx().values())
        index.append(dict(name=name, m=m, n=n, k=k, requantize=requantize, mma_in_ptx=mma, spills=kernels.spills(),
                          registers=kernels.registers()))
        print(name, index[-1], flush=True)

    for m, n, k in SHAPES:
        for requantize in (False, True):
            kernel(f"m{m}_n{n}_k{k}_{'requant' if requantize else 'int32'}", m, n, k, requantize, None)
    for name, *tile in TILE_VARIANTS:
        kernel(f"m4096_n4096_k4096_int32_{name}", 4096, 4096, 4096, False, GemmTile(*tile))
    (out / "index.json").write_text(json.dumps(index, indent=1))


def _expected(a, w, bias, mult, requantize: bool):
    """The kernel's results computed by torch on the GPU: float64 sums are exact here (|sum| < 2^53)."""
    import torch

    acc = (a.double() @ w.double().T).round().long()
    if not requantize:
        return acc.int()
    v = (acc + bias.long()) * mult.long()
    y = torch.div(v + (1 << (SHIFT - 1)), 1 << SHIFT, rounding_mode="floor") + OUT_ZP  # round half up
    return y.clamp(0, 255).to(torch.uint8)


def run(out: Path, index: list[dict], number: int, repeat: int) -> None:
    import torch
    import tvm  # the bundle's runtime-only TVM (cuda_device.kernel_bench loaded it)

    def seconds(fn):
        return cuda_device.cuda_seconds(fn, number, repeat)

    print("_int_mm: cuBLAS int8 with the faster weight layout; [K,N]: with B = [K, N] row-major (its other layout)")
    print(f"{'kernel':40} {'exact':>5} {'us':>9} {'TOPS':>7} | {'_int_mm us':>10} {'TOPS':>7} {'[K,N] TOPS':>10} | "
          f"{'fp16 us':>9} {'TFLOPS':>7} | ours/_int_mm")
    g = torch.Generator(device="cuda").manual_seed(0)
    for entry in index:
        m, n, k, requantize = entry["m"], entry["n"], entry["k"], entry["requantize"]
        a = torch.randint(0, 256, (m, k), dtype=torch.uint8, device="cuda", generator=g)
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=g)
        bias = torch.randint(-2**20, 2**20, (n,), dtype=torch.int32, device="cuda", generator=g)
        mult = torch.randint(2**29, 2**30, (n,), dtype=torch.int32, device="cuda", generator=g)
        result = torch.empty((m, n), dtype=torch.uint8 if requantize else torch.int32, device="cuda")
        f = tvm.runtime.load_module(str(out / f"{entry['name']}.so"))["main"]
        args = [tvm.runtime.from_dlpack(t) for t in ((a, w, bias, mult, result) if requantize else (a, w, result))]
        f(*args)
        exact = torch.equal(result, _expected(a, w, bias, mult, requantize))
        ours = seconds(lambda: f(*args))
        # cuBLAS with both weight layouts: B = [K, N] row-major, and B = the [N, K] weight read transposed.
        a8, wt = (a.int() - 128).to(torch.int8), w.T.contiguous()
        row_major = seconds(lambda: torch._int_mm(a8, wt))
        theirs = min(row_major, seconds(lambda: torch._int_mm(a8, w.T)))
        a16, w16 = a.half(), w.half()
        w16t = w16.T.contiguous()
        half = min(seconds(lambda: a16 @ w16t), seconds(lambda: a16 @ w16.T))
        ops = 2 * m * n * k
        print(f"{entry['name']:40} {str(exact):>5} {ours * 1e6:9.1f} {ops / ours / 1e12:7.1f} | {theirs * 1e6:10.1f} "
              f"{ops / theirs / 1e12:7.1f} {ops / row_major / 1e12:10.1f} | {half * 1e6:9.1f} {ops / half / 1e12:7.1f} | "
              f"{theirs / ours:5.2f}x", flush=True)


if __name__ == "__main__":
    cuda_device.kernel_bench(__doc__, build, run, number=20, repeat=7)
