"""target="cuda" with weight-only Linear layers (bits="w4" / "w8"): the GEMV kernel of cuda_gemv.py, and the
float16 tensor-core GEMM for larger static batches.

On any machine: the packing decodes (the kernel's way) to the codes, decode-shaped models build, and the
PTX has what the kernel is for (128-bit weight loads, no integer-to-float conversions, fp32 FMAs, warp
shuffles) and ptxas spills nothing. With a GPU and TVM's compiler (marker `gpu`, `pytest -m gpu`):
results against target="reference" and against float16 torch, within the float16 roundings' bound
(case_models.py: error_bound). A GPU machine with the TVM runtime only runs the same checks from a bundle
built of the GPU cases (cases.py: weight_only_cases()).
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import qcompile
from qcompile.backends.tvm.cuda import nvcc_build
from qcompile.backends.tvm.cuda.gemv_kernel import MAX_ROWS
from qcompile.backends.tvm.cuda.weight_codes import CODES, SUBNORMAL, WORDS_PER_LOAD
from qcompile.ir.rewrite import constant
from tests.backends.tvm.cuda.case_models import FP16_ROUNDOFF, MLP, seeded_linear
from tests.backends.tvm.cuda.cases import weight_only_cases
from tests.backends.tvm.cuda.cuda_on_cpu import assert_matches_reference


def _prefill(case) -> bool:
    """Whether a GPU case has more static rows than the GEMV takes (cuda_weight_only.py)."""
    return "dynamic_shapes" not in case.options and case.example[0].shape[:-1].numel() > MAX_ROWS


# ---------------------------------------------------------------- on any machine
def decode_like_kernel(packed: np.ndarray, bits: int) -> np.ndarray:
    """The signed codes [N, K] the kernel reads out of `packed`, as cuda_gemv.py reads them: per word and
    pair t, (word >> whole bytes of t*bits) & (pair_mask << the rest) viewed as two float16 subnormals,
    times 2^24, divided by 2^(the rest), minus the offset; lanes are k = 2t, 2t + 1."""
    codes = CODES[bits]
    n, words = packed.shape
    out = np.empty((n, words, codes.per_word), np.float32)
    for t in range(codes.per_word // 2):
        shift, in_place = t * bits // 8 * 8, t * bits % 8
        pair = ((packed >> np.uint32(shift)) & np.uint32(codes.pair_mask << in_place)).astype(np.uint32)
        halves = pair.view(np.float16).reshape(n, words, 2).astype(np.float32)
        out[:, :, 2 * t:2 * t + 2] = halves * SUBNORMAL / 2**in_place - codes.offset
    return out.reshape(n, -1)


@pytest.mark.parametrize("bits", [4, 8])
def test_packed_weights_decode_to_the_codes(bits):
    codes = CODES[bits]
    g = torch.Generator().manual_seed(bits)
    w = torch.randint(-codes.offset, codes.offset, (37, 8 * codes.chunk), dtype=torch.int8, generator=g).numpy()
    w[0, :2] = [-codes.offset, codes.offset - 1]
    packed = codes.pack(w)
    assert packed.dtype == np.uint32 and packed.shape == (37, w.shape[1] // codes.per_word)
    np.testing.assert_array_equal(decode_like_kernel(packed, bits), w.astype(np.float32))


@pytest.mark.parametrize("bits", [4, 8])
def test_unpack_inverts_pack(bits):
    codes = CODES[bits]
    words = np.random.default_rng(bits).integers(0, 2**32, (64, 3 * WORDS_PER_LOAD), dtype=np.uint32)
    w = codes.unpack(words, 64)
    assert w.dtype == np.int8 and w.shape == (64, 3 * WORDS_PER_LOAD * codes.per_word)
    assert w.min() == -codes.offset and w.max() == codes.offset - 1
    np.testing.assert_array_equal(codes.pack(w), words)
    np.testing.assert_array_equal(decode_like_kernel(words, bits), w.astype(np.float32))


def test_split_k_must_divide_the_warps():
    from qcompile.backends.tvm.cuda.gemv_kernel import GemvConfig, gemv_prim_func

    with pytest.raises(ValueError, match=r"split_k \(3\) must divide the warps per block \(4\)"):
        gemv_prim_func(64, 1024, 128, CODES[4], GemvConfig(warps=4, split_k=3))


def test_int4_packing_rejects_wider_codes():
    with pytest.raises(ValueError):
        CODES[4].pack(np.full((1, 32), 8, np.int8))


def _build(model, x, **kwargs):
    return qcompile.compile(model, (x,), target="cuda", progress=False, **kwargs)


def _gemv_kernels(compiled):
    build = compiled._runner.kernels
    ptx = {name: body for name, body in build.kernel_ptx().items() if name.startswith("gemv_")}
    return ptx, build.spills()


@pytest.mark.parametrize("bits", ["w4", "w8"])
def test_decode_mlp_builds_a_gemv_with_128_bit_weight_loads(bits):
    compiled = _build(MLP(512, 1024).eval(), torch.randn(1, 512), bits=bits, gemv="cuda_cores")
    ptx, spills = _gemv_kernels(compiled)
    assert len(ptx) == 2  # both layers
    for name, body in ptx.items():
        assert spills[name] == 0
        # rows (4) weight loads + activation loads per K step: all 128-bit, none narrower for the weights
        assert body.count("ld.global.nc.v4.u32") >= 4
        assert "ld.global.nc.u32" not in body and "ld.global.u32" not in body
        assert "cvt.rn.f32.s32" not in body and "cvt.rn.f32.u32" not in body  # no integer-to-float conversion
        assert "fma.rn.f32" in body and "shfl.sync.down.b32" in body


@pytest.mark.parametrize("rows", [1, 64], ids=["gemv", "prefill_gemm"])
@pytest.mark.parametrize("bits, weight_bytes", [("w4", 1000 * 2048 // 2), ("w8", 1000 * 2048)])
def test_the_library_carries_the_weights_at_their_width(bits, weight_bytes, rows, tmp_path):
    """w4 weights reach the GEMV and the prefill GEMM as int4 codes (half the bytes of int8 ones: what
    they read per call)."""
    _build(seeded_linear(2048, 1000, 0), torch.randn(rows, 2048), bits=bits).save(tmp_path)
    size = (tmp_path / "model.so").stat().st_size
    assert weight_bytes < size < weight_bytes + 300_000  # + scales, bias, kernels and host code


def test_dynamic_batch_builds_the_gemv():
    dims = ({0: torch.export.Dim("batch", min=1, max=64)},)
    compiled = _build(MLP(512, 1024).eval(), torch.randn(3, 512), bits="w4", dynamic_shapes=dims)
    ptx, spills = _gemv_kernels(compiled)
    assert len(ptx) == 2 and not any(spills[name] for name in ptx)


@pytest.mark.parametrize("m_block", [2, 5])
def test_each_activation_row_of_a_block_is_loaded(m_block, tmp_path):
    """Every activation row a block serves has loads of its own in the CUDA source (a row index bound to a
    variable once made the codegen reuse the first row's load for all rows: wrong results for M > 1)."""
    import tvm

    from qcompile.backends.tvm.cuda import pipeline
    from qcompile.backends.tvm.cuda.gemv_kernel import GemvConfig, gemv_prim_func

    codes = CODES[4]
    func = gemv_prim_func(64, 32 * codes.chunk, 128, codes, GemvConfig(rows=1, warps=2, m_block=m_block, unroll=1))
    _, kernels = pipeline.compile_module(tvm.IRModule({"main": func}), nvcc_build.target(), tmp_path)
    loads = set(re.findall(r"\*\(uint4\*\)\(X_ptr \+ ([^;]*)\);", kernels.source))
    assert len(loads) == m_block * codes.chunk // 8  # 8 float16 per 128-bit load


def test_a_3d_activation_reshapes_as_views_around_the_gemv_kernels():
    """The VM reshapes a 3-D activation with its builtin (a view) and calls two GPU kernels: the float16
    cast and the GEMV. (TVM's own pipeline once re-fused the input reshape with the cast into
    `fused_reshape_cast`, whose reshape loop no rule had bound to GPU threads: compiled for the host, it read
    device memory from the CPU and crashed on the GPU machine.)"""
    runner = _build(seeded_linear(2048, 1000, 3), torch.randn(2, 3, 2048), bits="w4")._runner
    called = set(re.findall(r"call\s+([\w.]+)\s+in:", runner.executable.as_text()))
    kernels = set(re.findall(r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+?)_kernel\w*\(", runner.kernels.source))
    assert "vm.builtin.reshape" in called
    assert {name for name in called if not name.startswith("vm.builtin.")} == {"cast", "gemv_linear_weight_only_default"}
    assert {"cast", "gemv_linear_weight_only_default"} <= kernels


WMMA_F16 = "wmma.mma.sync.aligned.row.col.m16n16k16.f32.f32"


@pytest.mark.parametrize("bits", ["w4", "w8"])
def test_large_static_batch_runs_on_tensor_cores(bits):
    """More than MAX_ROWS static rows: a float16 GEMM on tensor cores (cuda_fp16_gemm.py), the next GELU
    in its epilogue, instead of the GEMV."""
    compiled = _build(MLP(512, 1024).eval(), torch.randn(64, 512), bits=bits)
    gemv, _ = _gemv_kernels(compiled)
    build = compiled._runner.kernels
    gemms = {name: ptx for name, ptx in build.kernel_ptx().items() if "linear_weight_only" in name}
    assert not gemv and len(gemms) == 2 and any("gelu" in name for name in gemms)
    assert all(WMMA_F16 in ptx for ptx in gemms.values())
    assert not any(build.spills().values())


@pytest.mark.parametrize("case", [c for c in weight_only_cases() if _prefill(c)], ids=lambda c: c.name)
def test_prefill_lowering_is_within_the_bound_on_the_cpu(case):
    """The tensor-core path's arithmetic (float16 x and w = float16(code * scale), float32 sums) built for
    this CPU: within the same bound as the GEMV, of the reference."""
    assert_matches_reference(case.model, case.example, case.calibration, case.options, atol=case.atol)


# ---------------------------------------------------------------- with a GPU
needs_gpu = pytest.mark.skipif(not nvcc_build.gpu_present(), reason="no NVIDIA GPU here (cuda_build.gpu_present() is False)")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("case", weight_only_cases(), ids=lambda c: c.name)
def test_gpu_matches_reference(case):
    inputs, kwargs = case.example, case.options
    backend = qcompile.compile(case.model, inputs, target="cuda", calibration=case.calibration, progress=False,
                               **kwargs)
    ref = qcompile.compile(case.model, inputs, target="reference", calibration=case.calibration, progress=False,
                           **kwargs)
    got, want = backend(*inputs), ref(*inputs)  # cuda's outputs stay on the GPU
    assert (got.cpu() - want).abs().max().item() <= case.atol, case.name


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("bits", ["w4", "w8"])
def test_gpu_matches_float16_torch(bits):
    """The same dequantized weights in float16 through torch: cuBLAS also rounds x and w to float16."""
    lin, x = seeded_linear(4096, 4096, 5), torch.randn(3, 4096)
    backend = qcompile.compile(lin, (x,), target="cuda", bits=bits, progress=False)
    gm = backend.graph_module
    node = next(n for n in gm.graph.nodes if n.target == torch.ops.qcompile.linear_weight_only.default)
    _, w, scale, bias, group = node.args
    dequantized = constant(gm, w).float() * constant(gm, scale).repeat_interleave(group, dim=1)
    want = nn.functional.linear(x.half().cuda(), dequantized.half().cuda(), constant(gm, bias).half().cuda())
    # both round x and the weights (here w * scale, there the scale alone) to float16
    tolerance = 4 * FP16_ROUNDOFF * float((x.abs() @ dequantized.abs().T).max())
    assert (backend(x).cpu() - want.float().cpu()).abs().max().item() <= tolerance
