"""int4 weights on x86: the GEMM kernel reads them packed two per byte (x86_gemm.INT4_WEIGHTS) and must
match the int64 reference / the reference backend bit for bit, on odd shapes and on whole models."""
import numpy as np
import pytest
import torch
from torch import nn

import qcompile
from qcompile.backends.tvm.cpu import gemm_kernel as G
from qcompile.backends.tvm.cpu import pipeline as cpu_pipeline
from qcompile.backends.tvm.cpu.isa import (
    AVX2,
    AVX512_VNNI,
    AVX512_VNNI_EMULATED,
    host_supports,
)
from qcompile.backends.tvm.cpu.tiling import Tiling
from qcompile.ir import meta

VNNI = [AVX512_VNNI_EMULATED] + ([AVX512_VNNI] if host_supports(AVX512_VNNI) else [])
REQUANTS = [None, G.Requant(shift=38, out_zp=128), G.Requant(shift=31, out_zp=-5, qmin=-128, qmax=127, out_dtype="int8")]
CASCADELAKE = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}


def int4_problem(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-8, 8, (n, k), dtype=torch.int8, generator=g)
    a[0], w[0] = 255, -8  # the extreme products
    bias = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=g)
    mult = torch.randint(2**20, 2**31 - 1, (n,), dtype=torch.int32, generator=g)
    return a, w, bias, mult


def test_int4_words_hold_two_k_groups_low_nibble_first():
    w = np.arange(-8, 8, dtype=np.int8).reshape(2, 8)  # N=2, K=8: one word per column
    words = G.pack_weight_int4(w, AVX512_VNNI, 16)
    assert words.shape == (1, 1, 16)
    column0 = words[0, 0, 0:1].view(np.uint8)  # bytes i: low nibble k=i, high nibble k=4+i
    assert [(b & 0xF, b >> 4) for b in column0] == [(8, 12), (9, 13), (10, 14), (11, 15)]
    assert not words[0, 0, 2:].any()  # padding columns
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        G.pack_weight_int4(np.array([[8]], np.int8), AVX512_VNNI, 16)


def test_int4_needs_byte_lanes_and_falls_back_to_int8_words():
    assert G.weight_format(4, AVX512_VNNI) is G.INT4_WEIGHTS
    assert G.weight_format(4, AVX2) is G.INT8_WEIGHTS  # AVX2 reads int16 lanes
    assert G.weight_format(None, AVX512_VNNI) is G.INT8_WEIGHTS
    with pytest.raises(ValueError, match="int4 weights need 4 values per lane"):
        G.gemm_prim_func(32, 32, None, AVX2, Tiling(4, 8), G.INT4_WEIGHTS)


@pytest.mark.parametrize("isa", VNNI, ids=lambda i: i.name)
@pytest.mark.parametrize("requant", REQUANTS, ids=str)
def test_int4_kernel_bit_exact_on_odd_shapes(isa, requant):
    # K not a multiple of 8 (a padded half word), N odd (a ragged panel), M not a multiple of mr, every width.
    for (m, n, k), nv in [((13, 17, 31), 1), ((7, 33, 65), 2), ((29, 51, 9), 3), ((3, 5, 4), 1)]:
        a, w, bias, mult = int4_problem(m, n, k, seed=m + n + k)
        mul = None if requant is None else mult
        tiling = Tiling(mr=4, nr=nv * isa.lanes, panels=2)
        kernel = G.build_gemm(m, w, bias, mul, requant, isa=isa, tiling=tiling, weights=G.INT4_WEIGHTS)
        for rows in (1, 5, m):
            assert torch.equal(kernel(a[:rows]), G.reference_gemm(a[:rows], w, bias, mul, requant)), (m, n, k, rows)


@pytest.mark.parametrize("isa", VNNI, ids=lambda i: i.name)
def test_int4_kernel_with_chosen_tiles_bit_exact(isa):
    for m, n, k in [(1, 1000, 1280), (49, 129, 320), (300, 24, 96)]:
        a, w, bias, mult = int4_problem(m, n, k, seed=n)
        kernel = G.build_gemm(m, w, bias, mult, REQUANTS[1], isa=isa, weights=G.INT4_WEIGHTS)
        assert torch.equal(kernel(a), G.reference_gemm(a, w, bias, mult, REQUANTS[1]))


def test_int4_kernel_halves_the_weight_operand_and_compiles_to_vpdpbusd():
    a, w, bias, mult = int4_problem(8, 40, 24)
    int8 = G.build_gemm(8, w, bias, mult, REQUANTS[1], target=CASCADELAKE)
    int4 = G.build_gemm(8, w, bias, mult, REQUANTS[1], target=CASCADELAKE, weights=G.INT4_WEIGHTS)
    assert "vpdpbusd" in int4.assembly()
    # K=24: six 4-byte words per column as int8, three as int4.
    assert int4._consts[0].shape[1] * 2 == int8._consts[0].shape[1] == 6


class ConvNet(nn.Module):
    """Stem 3x3 (im2col GEMM), depthwise 3x3 (int8-unpacked weights), pointwise 1x1 (GEMM), classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 17, 3, 2, 1)
        self.dw = nn.Conv2d(17, 17, 3, 1, 1, groups=17)
        self.pw = nn.Conv2d(17, 33, 1)
        self.fc = nn.Linear(33, 7)

    def forward(self, x):
        y = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.fc(y.mean((2, 3)))


def linear_net():
    # K = 37 and 61: not multiples of 8; N = 61 and 5: odd.
    return nn.Sequential(nn.Linear(37, 61), nn.ReLU(), nn.Linear(61, 5))


@pytest.mark.parametrize("make, shape", [(ConvNet, (2, 3, 15, 13)), (linear_net, (3, 37))], ids=["conv", "linear"])
def test_bits4_models_bit_exact_against_reference(make, shape, tmp_path):
    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(shape)
    calibration = [torch.randn(shape) for _ in range(3)]
    ref = qcompile.compile(model, (x,), target="reference", calibration=calibration, bits=4, progress=False)
    x86 = qcompile.compile(model, (x,), target="x86", calibration=calibration, bits=4, progress=False)
    probe = torch.randn(shape)
    assert torch.equal(x86(probe), ref(probe))
    assert torch.equal(qcompile.load(x86.save(tmp_path / "x86"), trust_native_code=True)(probe), ref(probe))


def test_int4_layers_get_the_int4_kernel_and_int8_layers_keep_theirs():
    torch.manual_seed(0)
    model, x = ConvNet().eval(), torch.randn(2, 3, 15, 13)
    for bits, want in ((4, G.INT4_WEIGHTS), (8, G.INT8_WEIGHTS)):
        cm = qcompile.compile(model, (x,), target="reference", calibration=[x], bits=bits, progress=False)
        weights = [n for n in cm.graph_module.graph.nodes if n.op == "get_attr" and meta.storage_bits(n)]
        assert {meta.storage_bits(n) for n in weights} == {bits}
        seen = []
        cpu_pipeline.lower(cm.graph_module, CASCADELAKE, choose_tiling=lambda s: seen.append(s.weights) or Tiling(1, 16))
        assert seen == [want] * 3  # stem, pointwise, classifier; the depthwise conv is not a GEMM
