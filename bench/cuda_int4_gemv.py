"""The CUDA weight-only GEMV kernel (qcompile/backends/tvm/cuda_gemv.py) alone, against torch float16
F.linear on the same shape: time and achieved bandwidth = (packed weight + scale + activation bytes) / time.

Two steps, because the GPU machine has the TVM runtime only:

    python bench/cuda_int4_gemv.py build OUT      # here: one library per (shape, bits, config) + inputs
    python bench/cuda_int4_gemv.py run OUT        # there, OUT inside a bundle (tools/cuda_bundle.py puts it at .gpu/gemv)

`build` writes OUT/<name>.so (cubin inside, a few hundred KB) for every shape in SHAPES, bits 4 (group
128) and 8 (per channel), and every config in CONFIGS (the default config of cuda_gemv first), with
OUT/index.json (registers, spills). `run` makes the inputs there (random codes packed by
cuda_weight_codes.py, numpy only; float16 activations and scales; the expected output in float64 from the
same codes and rounded inputs), checks each kernel's output, times it and torch's F.linear(x fp16,
W fp16 [N, K]) with CUDA events (median of `--repeat` samples of `--number` calls each, after warm-up),
and prints the table. H100 SXM copy bandwidth is about 3.0 TB/s.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import cuda_device  # noqa: E402  (torch only: runs on both machines)

# (M, N, K): K = N = 4096; the 8192 x 28672 MLP's up projection (N = 28672, K = 8192) and down projection
# (N = 8192, K = 28672); small batches of the first.
SHAPES = [(1, 4096, 4096), (1, 28672, 8192), (1, 8192, 28672), (4, 4096, 4096), (16, 4096, 4096)]
# (rows per warp, warps per block, unroll): alternatives to the default, timed side by side.
CONFIGS = [(2, 4, 4), (4, 8, 2), (8, 4, 2), (1, 4, 8), (2, 8, 4), (1, 4, 4)]
GROUP = 128


def _weight_codes():
    """cuda_weight_codes.py loaded by its path: importing the qcompile package needs TVM's compiler."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "qcompile" / "backends" / "tvm" / "cuda_weight_codes.py"
    spec = importlib.util.spec_from_file_location("cuda_weight_codes", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def _problem(m: int, n: int, k: int, bits: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    codes = _weight_codes().CODES[bits]
    group = GROUP if bits == 4 else k
    w = rng.integers(-codes.offset, codes.offset, (n, k), dtype=np.int8)
    scale = (rng.random((n, k // group), dtype=np.float32) * 0.02 + 0.001).astype(np.float16)
    x = rng.standard_normal((m, k), dtype=np.float32).astype(np.float16)
    bias = rng.standard_normal(n, dtype=np.float32)
    dequantized = w.astype(np.float64) * np.repeat(scale.astype(np.float64), group, axis=1)
    expected = (x.astype(np.float64) @ dequantized.T + bias).astype(np.float32)
    return dict(x=x, w=codes.pack(w), scale=scale, bias=bias, expected=expected), group


def build(out: Path) -> None:
    import tvm

    from qcompile.backends.tvm import cuda, cuda_build
    from qcompile.backends.tvm.cuda_gemv import GemvConfig, default_config, gemv_prim_func
    from qcompile.backends.tvm.cuda_weight_codes import CODES

    out.mkdir(parents=True, exist_ok=True)
    target, index = cuda_build.target(), []
    for m, n, k in SHAPES:
        for bits in (4, 8):
            group = GROUP if bits == 4 else k
            default = default_config(m, n, k)
            configs = [default] + [GemvConfig(r, w, default.m_block, u) for r, w, u in CONFIGS
                                   if (r, w, u) != (default.rows, default.warps, default.unroll)]
            for cfg in configs:
                name = f"m{m}_n{n}_k{k}_w{bits}_r{cfg.rows}w{cfg.warps}b{cfg.m_block}u{cfg.unroll}"
                func = gemv_prim_func(n, k, group, CODES[bits], cfg)
                lib, kernels = cuda.compile_module(tvm.IRModule({"main": func}), target, out / "sources" / name)
                lib.export_library(str(out / f"{name}.so"))
                index.append(dict(name=name, m=m, n=n, k=k, bits=bits, default=cfg == default,
                                  group=group, spills=kernels.spills(), registers=kernels.registers()))
                print(name, index[-1]["registers"], index[-1]["spills"], flush=True)
    (out / "index.json").write_text(json.dumps(index, indent=1))


def run(out: Path, number: int, repeat: int) -> None:
    import torch

    import tvm  # the bundle's runtime-only TVM (cuda_device.kernel_bench loaded it)

    def time_us(fn):
        return cuda_device.cuda_seconds(fn, number, repeat) * 1e6

    index = json.loads((out / "index.json").read_text())
    print(f"{'kernel':44} {'us':>8} {'GB/s':>7} {'fp16 us':>8} {'fp16 GB/s':>9} {'max err':>9}  {'spills'}")
    torch_us, problems = {}, {}
    for entry in index:
        m, n, k, bits = entry["m"], entry["n"], entry["k"], entry["bits"]
        if (m, n, k, bits) not in problems:
            problems.clear()  # one problem's weights at a time
            problems[(m, n, k, bits)] = _problem(m, n, k, bits)[0]
        data = problems[(m, n, k, bits)]
        dev = tvm.cuda(0)
        args = [tvm.runtime.tensor(data[a], dev) for a in ("x", "w", "scale", "bias")]
        args.append(tvm.runtime.tensor(np.zeros((m, n), np.float32), dev))
        f = tvm.runtime.load_module(str(out / f"{entry['name']}.so"))["main"]
        f(*args)
        err = float(np.abs(args[-1].numpy() - data["expected"]).max())
        us = time_us(lambda: f(*args))
        moved = sum(data[a].nbytes for a in ("x", "w", "scale")) + m * n * 4
        x = torch.from_numpy(data["x"]).cuda()
        if (m, n, k) not in torch_us:
            dense = torch.randn(n, k, device="cuda", dtype=torch.float16)
            torch_us[(m, n, k)] = (time_us(lambda: torch.nn.functional.linear(x, dense)),
                                   dense.numel() * 2 + x.numel() * 2 + m * n * 2)
        t_us, t_bytes = torch_us[(m, n, k)]
        mark = "*" if entry["default"] else " "
        print(f"{mark}{entry['name']:43} {us:8.1f} {moved / us / 1e3:7.0f} {t_us:8.1f} {t_bytes / t_us / 1e3:9.0f} {err:9.2e}  {entry['spills']}",
              flush=True)


if __name__ == "__main__":
    cuda_device.kernel_bench(__doc__, build, run, number=50, repeat=11)
