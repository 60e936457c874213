"""The tensor-core weight-only GEMV (cuda_mma_gemv.py) on a machine without a GPU.

The packed words are decoded as the kernel decodes them (RegisterDecode's bit operations, emulated in
numpy) and placed where the mma reads them: A's element (row, column) of each lane's register value
comes from TVM's m16n8k16 float16 fragment layout (tensor_intrin.cuda, the layout TVM's own fp16 mma
kernels use), and the k each column multiplies from the PTX ISA's B layout (b0, b1: k = 2t, 2t + 1;
b2, b3: k = 2t + 8, 2t + 9) with the kernel's B registers, 4 consecutive float16 of the lane's
activations per fragment. Every code must land on its own row and k. The kernels build for the H100 with
the PTX they are for and no spills; the results on a GPU are bench/cuda/int4_gemv.py's (its max err column
against float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm.s_tir.tensor_intrin.cuda import shared_16x16_to_ldmatrix_32x8_layout

import qcompile
from qcompile.backends.tvm.cuda import nvcc_build, pipeline
from qcompile.backends.tvm.cuda.mma_gemv_kernel import (
    MmaGemvConfig,
    default_mma_config,
    mma_gemv_prim_func,
    ring_bytes,
)
from qcompile.backends.tvm.cuda.weight_codes import MMA_CODES, TILE, WORDS_PER_LOAD
from tests.backends.tvm.cuda.case_models import MLP

MMA = "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32"


def _a_element():
    """(lane, register value 0-7) -> (row, column) of the 16 x 16 A fragment."""
    return {shared_16x16_to_ldmatrix_32x8_layout(i, j): (i, j) for i in range(TILE) for j in range(TILE)}


def decode_like_kernel(words: np.ndarray, n: int, bits: int) -> np.ndarray:
    """float32 [n, K]: what the kernel multiplies each activation k of each weight row by."""
    codes = MMA_CODES[bits]
    tiles, count = words.shape
    steps = count // (32 * WORDS_PER_LOAD)
    by_lane = words.reshape(tiles, steps, 32, WORDS_PER_LOAD)
    out = np.full((tiles * TILE, steps * codes.step_k), np.nan, np.float32)
    element = _a_element()
    for lane in range(32):
        t = lane % 4
        for word in range(WORDS_PER_LOAD):
            fragment, in_fragment = divmod(word, codes.words_per_fragment)
            for position in range(codes.pairs):
                values = codes.decoder(position)(by_lane[:, :, lane, word])  # [tiles, steps, 2]
                register = in_fragment * codes.pairs + position
                for half in range(2):
                    row, column = element[(lane, 2 * register + half)]
                    assert (column % 8) // 2 == t  # the lane's own k slots
                    b = column % 2 + 2 * (column // 8)  # B register value holding this k slot
                    k = t * codes.lane_k + 4 * fragment + b  # the lane's activations: lane_k consecutive from t * lane_k
                    rows = np.arange(tiles)[:, None] * TILE + row
                    ks = np.arange(steps)[None, :] * codes.step_k + k
                    assert np.isnan(out[rows, ks]).all()  # each (row, k) once
                    out[rows, ks] = values[:, :, half]
    return out[:n]


@pytest.mark.parametrize("bits", [4, 8])
def test_fragments_decode_to_the_codes(bits):
    codes = MMA_CODES[bits]
    rng = np.random.default_rng(bits)
    w = rng.integers(-codes.offset, codes.offset, (40, 3 * codes.step_k)).astype(np.int8)
    w[0, :2] = [-codes.offset, codes.offset - 1]
    words = codes.pack(w)
    assert words.dtype == np.uint32 and words.shape == (3, 3 * 32 * WORDS_PER_LOAD)
    np.testing.assert_array_equal(decode_like_kernel(words, 40, bits), w.astype(np.float32))
    np.testing.assert_array_equal(codes.unpack(words, 40), w)


@pytest.mark.parametrize("bits", [4, 8])
def test_unpack_inverts_pack(bits):
    codes = MMA_CODES[bits]
    words = np.random.default_rng(bits).integers(0, 2**32, (2, 2 * 32 * WORDS_PER_LOAD), dtype=np.uint32)
    w = codes.unpack(words, 2 * TILE)
    assert w.min() == -codes.offset and w.max() == codes.offset - 1
    np.testing.assert_array_equal(codes.pack(w), words)


def test_scales_are_groups_by_rows_padded_to_whole_tiles():
    scale = np.arange(20 * 3, dtype=np.float16).reshape(20, 3)
    arranged = MMA_CODES[4].arrange_scales(scale)
    assert arranged.shape == (3, 32)
    np.testing.assert_array_equal(arranged[:, :20], scale.T)
    assert not arranged[:, 20:].any()


def test_bad_weights_and_configs_raise():
    with pytest.raises(ValueError, match="multiple of 64"):
        MMA_CODES[4].pack(np.zeros((16, 96), np.int8))
    with pytest.raises(ValueError, match="do not fit 4 bits"):
        MMA_CODES[4].pack(np.full((16, 64), 8, np.int8))
    with pytest.raises(ValueError, match="group size \\(32\\) must be multiples of 64"):
        mma_gemv_prim_func(64, 1024, 32, MMA_CODES[4], MmaGemvConfig())
    with pytest.raises(ValueError, match="m_block \\(17\\) must be 1 to 16"):
        mma_gemv_prim_func(64, 1024, 128, MMA_CODES[4], MmaGemvConfig(m_block=17))


def test_default_split_fills_the_gpu():
    """At the bench's int4 shapes: the fastest configs on the H200 (runs 7-9), or within 5% of them."""
    assert default_mma_config(1, 4096, 4096, MMA_CODES[4]) == MmaGemvConfig(tiles=1, split_k=8, stages=8, m_block=1)
    assert default_mma_config(1, 28672, 8192, MMA_CODES[4]) == MmaGemvConfig(tiles=1, split_k=4, stages=8, m_block=1)
    assert default_mma_config(1, 8192, 28672, MMA_CODES[4]) == MmaGemvConfig(tiles=1, split_k=8, stages=8, m_block=1)
    assert default_mma_config(4, 4096, 4096, MMA_CODES[4]) == MmaGemvConfig(tiles=1, split_k=8, stages=8, m_block=4)
    sixteen = default_mma_config(16, 4096, 4096, MMA_CODES[4])
    assert sixteen.m_block == 16  # the weights read once
    assert sixteen.split_k == 4 and sixteen.stages == 8  # 8 warps would have 4 stages (8: 166 KB, over sm_80's)
    assert ring_bytes(MMA_CODES[4], sixteen) <= 96 << 10
    small = default_mma_config(None, 64, 128, MMA_CODES[4])  # 2 steps of K: no more warps than steps
    assert small.split_k == 2 and small.stages == 1 and small.m_block == 8


@pytest.mark.parametrize("bits, n, k, cfg", [
    (4, 1000, 2048, MmaGemvConfig(tiles=2, split_k=2, stages=4, m_block=16)),  # N not whole tiles; 2 mma per A
    (4, 4096, 4096, MmaGemvConfig(tiles=1, split_k=8, stages=8, m_block=1)),
    (8, 640, 1152, MmaGemvConfig(tiles=1, split_k=4, stages=4, m_block=3)),  # steps not whole rounds of the warps
])
def test_kernel_ptx(bits, n, k, cfg, tmp_path):
    """The ring: `stages` steps of copies issued before the first wait and one step's after each step's
    mma; the copies asynchronous (cp.async), 16 bytes each: weights, activations (per 8 rows), scales;
    one mma per fragment and 8 activation rows."""
    codes = MMA_CODES[bits]
    func = mma_gemv_prim_func(n, k, 128 if bits == 4 else k, codes, cfg)
    _, kernels = pipeline.compile_module(tvm.IRModule({"main": func}), nvcc_build.target(), tmp_path)
    (ptx,) = kernels.kernel_ptx().values()
    copies_per_step = 1 + -(-cfg.m_block // 8) * codes.lane_k // 8 + 1
    steps = -(-k // codes.step_k // cfg.split_k)
    refills = cfg.stages if steps > cfg.stages else 0  # else every refill lies past K: none compiled
    assert ptx.count("cp.async.cg.shared.global") == (cfg.stages + refills) * copies_per_step
    assert ptx.count("cp.async.wait_group " + str(cfg.stages - 1)) == cfg.stages
    assert ptx.count(MMA) == cfg.stages * codes.tiles_per_step * -(-cfg.m_block // 8)
    decode = "lop3.b32" if bits == 4 else "prmt.b32"  # one instruction makes a register's half2 bits
    assert ptx.count(decode) == cfg.stages * WORDS_PER_LOAD * codes.pairs
    assert "ld.global" not in ptx.split("cp.async.wait_group")[1]  # no synchronous loads in the steps
    assert "cvt.rn.f32.s32" not in ptx and "cvt.rn.f32.u32" not in ptx
    assert kernels.spills() == {"main_kernel": 0}


@pytest.mark.parametrize("bits, rows, free_batch", [
    ("w4", 1, False), ("w8", 1, False),  # one activation row
    ("w4", 3, True),  # a free batch: blocks of 8 rows
    ("w8", 16, False),  # 16 rows: two mma per fragment
])
def test_decode_mlp_lowers_to_the_tensor_core_gemv(bits, rows, free_batch):
    """By default (gemv="auto")."""
    dims = ({0: torch.export.Dim("batch", min=1, max=64)},) if free_batch else None
    compiled = qcompile.compile(MLP(512, 1024).eval(), (torch.randn(rows, 512),), target="cuda", bits=bits,
                                dynamic_shapes=dims, progress=False)
    build = compiled._runner.kernels
    gemv = {name: ptx for name, ptx in build.kernel_ptx().items() if name.startswith("gemv_")}
    assert len(gemv) == 2 and not any(build.spills().values())
    codes = MMA_CODES[int(bits[1:])]
    for name, ptx in gemv.items():
        n, k = (512, 1024) if "_default_1_" in name else (1024, 512)  # down, up
        cfg = default_mma_config(None if free_batch else rows, n, k, codes)
        assert ptx.count(MMA) == cfg.stages * codes.tiles_per_step * -(-cfg.m_block // 8)


@pytest.mark.parametrize("gemv, group_size, kernel", [
    ("auto", 32, "cuda_cores"),  # groups of 32 codes: less than the mma's K step (64)
    ("cuda_cores", 128, "cuda_cores"),
    ("tensor_cores", 128, "tensor_cores"),
])
def test_the_gemv_option_picks_the_kernel(gemv, group_size, kernel):
    config = qcompile.QuantConfig(bits=4, activations="float", group_size=group_size)
    compiled = qcompile.compile(MLP(512, 1024).eval(), (torch.randn(1, 512),), target="cuda", config=config,
                                gemv=gemv, progress=False)
    gemv_ptx = [ptx for name, ptx in compiled._runner.kernels.kernel_ptx().items() if name.startswith("gemv_")]
    assert len(gemv_ptx) == 2 and all((MMA in ptx) == (kernel == "tensor_cores") for ptx in gemv_ptx)


def test_an_unknown_gemv_is_a_clear_error():
    with pytest.raises(qcompile.UsageError, match="gemv must be one of 'auto', 'tensor_cores', 'cuda_cores', got 'fast'"):
        qcompile.compile(MLP(64, 128).eval(), (torch.randn(1, 64),), target="cuda", bits="w4", gemv="fast", progress=False)
