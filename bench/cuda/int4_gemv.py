"""The CUDA weight-only GEMV kernels alone, on CUDA cores (qcompile/backends/tvm/cuda/gemv_kernel.py, names
`..._r<rows>w<warps>b<m_block>u<unroll>s<split_k>`) and on tensor cores (cuda_mma_gemv.py, names
`..._mma_t<tiles>s<split_k>p<stages>b<m_block>`), against torch float16 F.linear on the same shape: time and
achieved bandwidth = (packed weight + scale + activation bytes) / time.

Two steps, because the GPU machine has the TVM runtime only:

    python bench/cuda/int4_gemv.py build OUT      # here: one library per (shape, bits, config) + inputs
    python bench/cuda/int4_gemv.py run OUT        # there, OUT inside a bundle (tools/cuda_bundle.py puts it at .gpu/gemv)

`build` writes OUT/<name>.so (cubin inside, about 100 KB) for every shape in SHAPES, bits 4 (group 128)
and 8 (per channel): each kernel's default config (marked *; gemv="auto" takes the tensor-core one) and
MMA_CONFIGS[M], with OUT/index.json (registers, spills). `run` makes the inputs there (random packed
words in each kernel's layout, unpacked by cuda_weight_codes.py for the expected output, computed in float64 on the GPU from the same codes and
rounded inputs; float16 activations and scales), checks each kernel's output, times it and torch's F.linear(x fp16,
W fp16 [N, K]) with CUDA events (median of `--repeat` samples of `--number` calls each, after warm-up),
and prints the table, then each int4 M = 1 shape's fastest correct config per kernel against the
issue's Must-show. Each timed call reads a different copy of the weights (4x the L2 cache in all), so
the bandwidth is device memory's; the ceiling printed first is a 1 GiB device-to-device copy's. The
summary also times a copy kernel that moves each shape's bytes: at small sizes its own ramp and tail keep
it below the ceiling too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cuda_device  # noqa: E402  (torch only: runs on both machines)

# (M, N, K): K = N = 4096; the 8192 x 28672 MLP's up projection (N = 28672, K = 8192) and down projection
# (N = 8192, K = 28672); small batches of the first.
SHAPES = [(1, 4096, 4096), (1, 28672, 8192), (1, 8192, 28672), (4, 4096, 4096), (16, 4096, 4096)]
# (tiles per block, split_k, stages) of the tensor-core kernel, timed beside its default (the CUDA-core
# kernel's configs were swept in runs 2-6, bench/results/cuda/2026-11-26-h200-*: its defaults are their best).
# Run 7's defaults were (1, 8, 8), (2, 2, 8) and (1, 4, 8) at M = 1, (1, 8, 8) at M = 4 and (1, 8, 4) at M = 16;
# run 8's (1, 16, 4), (1, 4, 8), (1, 8, 8), (1, 16, 4) and (1, 16, 2). Run 8 also timed 32-warp blocks,
# (1, 32, 2) and (2, 16, 4): slower at every shape.
MMA_CONFIGS = {1: [(1, 8, 8), (1, 4, 8), (1, 16, 4), (1, 16, 8)], 4: [(1, 16, 4)], 16: [(1, 8, 4), (1, 16, 2)]}
GROUP = 128


def _weight_codes():
    """cuda_weight_codes.py loaded by its path: importing the qcompile package needs TVM's compiler."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "qcompile" / "backends" / "tvm" / "cuda" / "weight_codes.py"
    spec = importlib.util.spec_from_file_location("cuda_weight_codes", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _problem(m: int, n: int, k: int, bits: int, kernel: str):
    """cuda_weight_codes.random_gemv_problem, its expected output computed in float64 on the GPU (a CPU
    float64 copy of a 28672 x 8192 weight would cost the GPU machine a minute)."""
    import torch

    p = _weight_codes().random_gemv_problem(m, n, k, bits, kernel, GROUP if bits == 4 else k)
    w = torch.from_numpy(p.codes).cuda().double()
    dequantized = w * torch.from_numpy(p.group_scale).cuda().double().repeat_interleave(p.group, dim=1)
    expected = torch.from_numpy(p.x).cuda().double() @ dequantized.T + torch.from_numpy(p.bias).cuda().double()
    return dict(x=p.x, w=p.words, scale=p.scale, bias=p.bias, expected=expected.float().cpu().numpy())


def build(out: Path) -> None:
    import tvm

    from qcompile.backends.tvm.cuda import nvcc_build, pipeline
    from qcompile.backends.tvm.cuda.gemv_kernel import default_config, gemv_prim_func
    from qcompile.backends.tvm.cuda.mma_gemv_kernel import (
        MmaGemvConfig,
        default_mma_config,
        mma_gemv_prim_func,
    )
    from qcompile.backends.tvm.cuda.weight_codes import CODES, MMA_CODES

    out.mkdir(parents=True, exist_ok=True)
    target, index = nvcc_build.target(), []
    for m, n, k in SHAPES:
        for bits in (4, 8):
            group = GROUP if bits == 4 else k
            cfg = default_config(m, n, k)
            kernels = [(f"r{cfg.rows}w{cfg.warps}b{cfg.m_block}u{cfg.unroll}s{cfg.split_k}", "cuda_cores", True,
                        gemv_prim_func(n, k, group, CODES[bits], cfg))]
            mma_default = default_mma_config(m, n, k, MMA_CODES[bits])
            for mma in dict.fromkeys([mma_default, *(MmaGemvConfig(*c, m_block=mma_default.m_block) for c in MMA_CONFIGS[m])]):
                kernels.append((f"mma_t{mma.tiles}s{mma.split_k}p{mma.stages}b{mma.m_block}", "tensor_cores",
                                mma == mma_default, mma_gemv_prim_func(n, k, group, MMA_CODES[bits], mma)))
            for suffix, kernel, default, func in kernels:
                name = f"m{m}_n{n}_k{k}_w{bits}_{suffix}"
                lib, built = pipeline.compile_module(tvm.IRModule({"main": func}), target, out / "sources" / name)
                lib.export_library(str(out / f"{name}.so"))
                index.append(dict(name=name, m=m, n=n, k=k, bits=bits, kernel=kernel, default=default,
                                  group=group, spills=built.spills(), registers=built.registers()))
                print(name, index[-1]["registers"], index[-1]["spills"], flush=True)
    (out / "index.json").write_text(json.dumps(index, indent=1))


def _copies(nbytes: int) -> int:
    """How many copies of a weight the timing loop cycles through so that each call reads it from device
    memory, not from the L2 cache the previous call left it in (4x the L2 in all)."""
    import torch

    return max(1, -(-4 * torch.cuda.get_device_properties(0).L2_cache_size // nbytes))


def copy_bandwidth(number: int, repeat: int) -> float:
    """Bytes per second of a 1 GiB device-to-device copy, bytes read plus bytes written: the ceiling."""
    import torch

    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    return 2 * src.numel() / cuda_device.cuda_seconds(lambda: dst.copy_(src), number, repeat)


def small_copy_us(nbytes: int, calls: int) -> float:
    """Kernel µs of torch's elementwise copy kernel (float16 negation) reading nbytes / 2 and writing as many,
    each call from memory: what a kernel that only moves a GEMV's bytes takes, launch ramp and tail included."""
    import torch

    sources = [torch.randn(nbytes // 4, device="cuda", dtype=torch.float16) for _ in range(_copies(nbytes // 2))]
    dst = torch.empty_like(sources[0])
    return cuda_device.kernel_seconds(_Cycle(lambda src: torch.neg(src, out=dst), sources), calls) * 1e6


class _Cycle:
    """Calls fn(item) with the next of `items` on each call."""

    def __init__(self, fn, items):
        self.fn, self.items, self.i = fn, items, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.items)
        return self.fn(self.items[self.i])


def run(out: Path, index: list[dict], number: int, repeat: int) -> None:
    import torch
    import tvm  # the bundle's runtime-only TVM (cuda_device.kernel_bench loaded it)

    def time_us(fn):
        """(µs per call between CUDA events, µs of kernel time per call by CUPTI)."""
        return cuda_device.cuda_seconds(fn, number, repeat) * 1e6, cuda_device.kernel_seconds(fn, number) * 1e6

    ceiling = copy_bandwidth(5, 5) / 1e9
    print(f"{torch.cuda.get_device_name()}: device-to-device copy {ceiling:.0f} GB/s (read + write); "
          f"L2 {torch.cuda.get_device_properties(0).L2_cache_size >> 20} MiB; every timed call reads its weights from memory.\n"
          "call us: per call, CUDA events around back-to-back calls; kernel us: GPU kernel time per call (CUPTI). "
          "GB/s, % of the copy and the speed-up over torch fp16 are of kernel times.")
    print(f"{'kernel':44} {'call us':>8} {'kern us':>8} {'GB/s':>6} {'%copy':>5} | {'fp16 call':>9} {'fp16 kern':>9} "
          f"{'GB/s':>6} | {'speed-up':>8} {'max err':>9}  spills")
    dev, torch_us, problems, rows, small_copy = tvm.cuda(0), {}, {}, [], {}
    for entry in index:
        key = m, n, k, bits, kernel = entry["m"], entry["n"], entry["k"], entry["bits"], entry["kernel"]
        if key not in problems:
            problems.clear()  # one problem's weights at a time
            data = _problem(m, n, k, bits, kernel)
            x, scale, bias = (tvm.runtime.tensor(data[a], dev) for a in ("x", "scale", "bias"))
            weights = [tvm.runtime.tensor(data["w"], dev) for _ in range(_copies(data["w"].nbytes))]
            problems[key] = data, x, scale, bias, weights
        data, x, scale, bias, weights = problems[key]
        result = tvm.runtime.tensor(np.full((m, n), np.nan, np.float32), dev)  # poisoned: every value must be written
        f = tvm.runtime.load_module(str(out / f"{entry['name']}.so"))["main"]
        f(x, weights[0], scale, bias, result)
        err = float(np.abs(result.numpy() - data["expected"]).max())
        call, kern = time_us(_Cycle(lambda w: f(x, w, scale, bias, result), weights))
        moved = sum(data[a].nbytes for a in ("x", "w", "scale")) + m * n * 4
        if (m, n, k) not in torch_us:
            xt = torch.from_numpy(data["x"]).cuda()
            dense = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(_copies(n * k * 2))]
            torch_us[(m, n, k)] = (*time_us(_Cycle(lambda w: torch.nn.functional.linear(xt, w), dense)),
                                   n * k * 2 + xt.numel() * 2 + m * n * 2)
            del dense
        t_call, t_kern, t_bytes = torch_us[(m, n, k)]
        mark = "*" if entry["default"] else " "
        print(f"{mark}{entry['name']:43} {call:8.1f} {kern:8.1f} {moved / kern / 1e3:6.0f} {100 * moved / kern / 1e3 / ceiling:4.0f}% | "
              f"{t_call:9.1f} {t_kern:9.1f} {t_bytes / t_kern / 1e3:6.0f} | {t_kern / kern:7.2f}x {err:9.2e}  {entry['spills']}",
              flush=True)
        problem = (m, n, k, bits)  # its kernels all move the same bytes: one copy timing each
        if problem not in small_copy:
            small_copy[problem] = small_copy_us(moved, number)
        rows.append(dict(entry, kern=kern, moved=moved, copy=moved / kern / 1e3 / ceiling, speedup=t_kern / kern,
                         correct=err <= CORRECT * float(np.abs(data["expected"]).max()), small_copy=small_copy[problem]))
    print_must_show(rows, ceiling)


CORRECT = 1e-4  # a kernel's max error against float64, relative to the largest output, that counts as right
MUST_SHOW = (3.0, 0.70)  # the target: int4 GEMV at least 3x torch float16, at >= 70% of the bandwidth


def print_must_show(rows: list[dict], ceiling: float) -> None:
    """Per int4 shape at M = 1: each kernel's fastest correct config, and whether it meets MUST_SHOW; and
    the share of the copy a copy kernel moving the same bytes reaches."""
    speedup, share = MUST_SHOW
    print(f"\nMust-show (int4, M = 1: >= {speedup}x torch fp16 at >= {share:.0%} of the copy), fastest correct config per kernel:")
    int4 = [r for r in rows if r["m"] == 1 and r["bits"] == 4]
    for shape in dict.fromkeys((r["n"], r["k"]) for r in int4):
        first = next(r for r in int4 if (r["n"], r["k"]) == shape)
        copy_us = first["small_copy"]
        print(f"  N = {shape[0]}, K = {shape[1]}: a copy kernel moving the same bytes takes {copy_us:.1f} us, "
              f"{first['moved'] / copy_us / 1e3 / ceiling:.0%} of the copy")
        for kernel in dict.fromkeys(r["kernel"] for r in int4):
            tried = [r for r in int4 if (r["n"], r["k"]) == shape and r["kernel"] == kernel]
            good = [r for r in tried if r["correct"]]
            if not good:
                print(f"  N = {shape[0]}, K = {shape[1]}, {kernel}: {len(tried)} configs, none correct")
                continue
            best = min(good, key=lambda r: r["kern"])
            met = best["speedup"] >= speedup and best["copy"] >= share
            print(f"  N = {shape[0]}, K = {shape[1]}, {kernel}: {best['name']} {best['kern']:.1f} us, "
                  f"{best['speedup']:.2f}x, {best['copy']:.0%} of the copy: {'met' if met else 'not met'}")


if __name__ == "__main__":
    cuda_device.kernel_bench(__doc__, build, run, number=50, repeat=11)
