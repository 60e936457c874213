"""target="cuda"'s kernels run by the CPU emulator (cuda_emulator.py) under every schedule in SCHEDULES: what
each thread of the GPU would compute, without a GPU. The weight-only GEMVs (both kernels, int4 and int8, ragged
tiles and ragged K splits) against float64; the int8 tensor-core GEMM exactly. Each kernel's output is the same
bits under every schedule: a race (a stage read before its wait, a missing barrier) would change it."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tvm

from qcompile.backends.tvm.cuda import nvcc_build, pipeline
from qcompile.backends.tvm.cuda.emulator.kernels import (
    SCHEDULES,
    EmulatedKernels,
    launch_dims,
)
from qcompile.backends.tvm.cuda.gemv_kernel import (
    GemvConfig,
    default_config,
    gemv_prim_func,
)
from qcompile.backends.tvm.cuda.mma_gemv_kernel import (
    MmaGemvConfig,
    default_mma_config,
    mma_gemv_prim_func,
)
from qcompile.backends.tvm.cuda.weight_codes import (
    CODES,
    MMA_CODES,
    random_gemv_problem,
)

GEMV_TOLERANCE = 1e-5  # of the largest output: float32 sums of 1000-odd products in another order


def _emulated(func, directory: Path, source_edit=lambda source: source) -> EmulatedKernels:
    """`func` built by nvcc's path (the cubin too); its CUDA source (after `source_edit`) for the emulator."""
    _, built = pipeline.compile_module(tvm.IRModule({"main": func}), nvcc_build.target(), directory)
    return EmulatedKernels(source_edit(built.source))


def _every_schedule(kernels: EmulatedKernels, grid, block, args: dict, output: str, out: np.ndarray) -> list[np.ndarray]:
    """The output under each schedule, from a poisoned start (every value must be written)."""
    results = []
    for copies, order in SCHEDULES:
        result = np.full_like(out, 0xAB if out.dtype.kind in "iu" else np.nan)
        kernels.launch("main_kernel", grid, block, {**args, output: result}, copies=copies, order=order)
        results.append(result)
    return results


def _under_every_schedule(func, directory: Path, args: dict, output: str, out: np.ndarray, **sizes) -> np.ndarray:
    """The output, checked to be the same bits under every schedule."""
    results = _every_schedule(_emulated(func, directory), *launch_dims(func, **sizes), {**args, **sizes}, output, out)
    for (copies, order), result in zip(SCHEDULES[1:], results[1:]):
        np.testing.assert_array_equal(result, results[0], err_msg=f"copies={copies}, order={order}")
    return results[0]


def _mma(m, n, k, bits, config=None):
    codes = MMA_CODES[bits]
    return "tensor_cores", m, n, k, bits, config or default_mma_config(m, n, k, codes)


def _cores(m, n, k, bits, config=None):
    return "cuda_cores", m, n, k, bits, config or default_config(m, n, k)


GEMVS = {
    # 13 row tiles, the last one half empty; the default split of K, 16 warps (TVM's merged shared memory
    # once put two rings on the same bytes there)
    "mma_w4_m1_ragged_tiles": _mma(1, 200, 1024, 4),
    # 36 steps of K over 8 warps: the last round has 4; two tiles per block, a deep ring
    "mma_w4_m3_ragged_split": _mma(3, 96, 1152, 4, MmaGemvConfig(tiles=2, split_k=8, stages=8, m_block=3)),
    "mma_w8_m16": _mma(16, 64, 512, 8),
    "cores_w8_m4": _cores(4, 64, 512, 8),
    "cores_w4_m2_split": _cores(2, 40, 2048, 4, GemvConfig(rows=2, warps=4, m_block=1, unroll=2, split_k=4)),
}


@pytest.mark.parametrize("case", GEMVS)
def test_weight_only_gemv_emulated(case, tmp_path):
    kernel, m, n, k, bits, config = GEMVS[case]
    group = 128 if bits == 4 else k
    problem = random_gemv_problem(m, n, k, bits, kernel, group)
    build = mma_gemv_prim_func if kernel == "tensor_cores" else gemv_prim_func
    layout = (MMA_CODES if kernel == "tensor_cores" else CODES)[bits]
    args = dict(X=problem.x, w=problem.words, s=problem.scale, bias=problem.bias)
    y = _under_every_schedule(build(n, k, group, layout, config), tmp_path, args, "Y", np.empty((m, n), np.float32), M=m)
    expected = problem.expected()
    assert np.abs(y - expected).max() <= GEMV_TOLERANCE * np.abs(expected).max()


def _gemm_bench():
    """bench/cuda/gemm.py (its TE definitions: a model's linear layer, with and without requantize)."""
    path = Path(__file__).resolve().parents[4] / "bench" / "cuda" / "gemm.py"
    spec = importlib.util.spec_from_file_location("cuda_gemm_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("m, n, k", [
    (256, 384, 320),  # 2 x 3 block tiles, five K steps of 64
    (128, 128, 1024),  # eight K steps of 128 (cuda_gemm.DEEP_K on sm_90)
])
def test_int8_tensor_core_gemm_emulated_is_exact(m, n, k, tmp_path):
    """ldmatrix, u8 x s8 mma and the cp.async pipeline of the GEMM rule (cuda_gemm.py), with the fused
    requantize epilogue (bench/cuda/gemm.py's)."""
    bench = _gemm_bench()
    func = pipeline.apply_rules(tvm.IRModule({"main": bench._gemm_func(m, n, k, True)}), nvcc_build.target())["main"]
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    bias = rng.integers(-1000, 1000, n, dtype=np.int32)
    mult = rng.integers(2**29, 2**30, n, dtype=np.int32)
    scaled = (a.astype(np.int64) @ w.astype(np.int64).T + bias) * mult.astype(np.int64)
    expected = np.clip(((scaled + (1 << (bench.SHIFT - 1))) >> bench.SHIFT) + bench.OUT_ZP, 0, 255).astype(np.uint8)
    got = _under_every_schedule(func, tmp_path, dict(a=a, w=w, bias=bias, mult=mult), "requantize", np.empty_like(expected))
    np.testing.assert_array_equal(got, expected)


def test_the_split_k_barrier_of_the_tensor_core_gemv_is_needed(tmp_path):
    """The __syncthreads before the split-K sums go onto the rings' shared memory, removed from the generated
    source: a warp that finishes first overwrites the rings of warps still computing, and the results
    depend on the schedule. (The kernel keeps it: test_weight_only_gemv_emulated.)"""
    m, n, k = 1, 64, 1024
    problem = random_gemv_problem(m, n, k, 4, "tensor_cores", 128)
    func = mma_gemv_prim_func(n, k, 128, MMA_CODES[4], MmaGemvConfig(tiles=1, split_k=8, stages=4, m_block=1))
    def without_first_barrier(source: str) -> str:
        assert source.count("__syncthreads();") == 2
        return source.replace("__syncthreads();", "", 1)

    kernels = _emulated(func, tmp_path, without_first_barrier)
    args = dict(X=problem.x, w=problem.words, s=problem.scale, bias=problem.bias, M=m)
    expected = problem.expected()
    results = _every_schedule(kernels, *launch_dims(func, M=m), args, "Y", np.empty((m, n), np.float32))
    assert any(not np.abs(y - expected).max() <= GEMV_TOLERANCE * np.abs(expected).max() for y in results)
