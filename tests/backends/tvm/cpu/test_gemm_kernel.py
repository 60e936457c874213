"""The hand-written x86 GEMM kernel (qcompile/backends/tvm/cpu/gemm_kernel.py): bit-exact against the int64
reference for every ISA this CPU can run, on odd shapes and the tiles the cost model picks."""
import pytest
import torch

from qcompile.backends.tvm.cpu import gemm_kernel as G
from qcompile.backends.tvm.cpu.isa import (
    AVX2,
    AVX512_VNNI,
    AVX512_VNNI_EMULATED,
    host_supports,
)
from qcompile.backends.tvm.cpu.tiling import Tiling, choose_tiling, ranked_tilings

# The AVX512-VNNI kernel with vpdpbusd spelled out runs on any AVX2 host; the real one where the CPU has it.
RUNNABLE = [AVX2, AVX512_VNNI_EMULATED] + ([AVX512_VNNI] if host_supports(AVX512_VNNI) else [])
REQUANTS = [None, G.Requant(shift=38, out_zp=128), G.Requant(shift=31, out_zp=3, qmin=2, qmax=250),
            G.Requant(shift=62, out_zp=-5, qmin=-128, qmax=127, out_dtype="int8")]
# M, N, K of MobileNetV2 GEMMs with small N / K / M: N=16 and 24 (narrow tiles), K=16, the classifier.
MOBILENET = [(12544, 16, 32), (3136, 24, 96), (784, 192, 32), (49, 1280, 320), (1, 1000, 1280)]


def problem(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, (m, k), dtype=torch.uint8, generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    a[0], w[0] = 255, -128  # the extreme products: a saturating inner product would show here
    bias = torch.randint(-(2**20), 2**20, (n,), dtype=torch.int32, generator=g)
    mult = torch.randint(2**20, 2**31 - 1, (n,), dtype=torch.int32, generator=g)
    return a, w, bias, mult


def assert_exact(kernel, a, w, bias, mult, requant, rows):
    mult = None if requant is None else mult
    for m in rows:
        got, want = kernel(a[:m]), G.reference_gemm(a[:m], w, bias, mult, requant)
        assert torch.equal(got, want), f"{kernel.isa.name} {kernel.tiling} M={m} requant={requant}"


@pytest.mark.parametrize("isa", RUNNABLE, ids=lambda i: i.name)
@pytest.mark.parametrize("requant", REQUANTS, ids=str)
def test_odd_shapes_and_tiles_bit_exact(isa, requant):
    # Ragged N and K, M not a multiple of mr, and tiles of every width the cost model may pick.
    for (m, n, k), nv in [((13, 17, 31), 1), ((7, 33, 65), 2), ((29, 50, 9), 3)]:
        a, w, bias, mult = problem(m, n, k, seed=m + n + k)
        tiling = Tiling(mr=4, nr=nv * isa.lanes, panels=2)
        kernel = G.build_gemm(m, w, bias, None if requant is None else mult, requant, isa=isa, tiling=tiling)
        assert_exact(kernel, a, w, bias, mult, requant, rows=[1, 5, m])


@pytest.mark.parametrize("isa", RUNNABLE, ids=lambda i: i.name)
def test_mobilenet_shapes_with_chosen_tiles_bit_exact(isa):
    requant = REQUANTS[1]
    for m, n, k in MOBILENET:
        a, w, bias, mult = problem(m, n, k, seed=n)
        kernel = G.build_gemm(m, w, bias, mult, requant, isa=isa)
        assert_exact(kernel, a, w, bias, mult, requant, rows=[m])


@pytest.mark.parametrize("isa", [AVX2, AVX512_VNNI], ids=lambda i: i.name)
def test_chosen_tiles_fit_the_shape(isa):
    for m, n, k in MOBILENET:
        tiling = choose_tiling(isa, m, n, k, threads=2)
        G.gemm_prim_func(n, k, None, isa, tiling)  # legal: registers, stack-sized accumulators
        assert tiling.mr <= m
    # A narrow N gets a tile no wider than N instead of computing padding columns.
    assert choose_tiling(isa, 12544, 16, 32, threads=2).nr == 16
    # A single row (the classifier) is parallelised over N: every thread gets several panels.
    gemv = choose_tiling(isa, 1, 1000, 1280, threads=2)
    assert gemv.mr == 1 and -(-1000 // gemv.nr) // gemv.panels >= 4 * 2


def test_vnni_kernel_compiles_to_vpdpbusd():
    a, w, bias, mult = problem(8, 40, 24)
    target = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}
    kernel = G.build_gemm(8, w, bias, mult, REQUANTS[1], target=target)
    assert kernel.isa is AVX512_VNNI and "vpdpbusd" in kernel.assembly()


@pytest.mark.parametrize("tiling, message", [
    (Tiling(mr=6, nr=12), "multiple of 8 lanes"),
    (Tiling(mr=8, nr=16), "more than 16 vector registers"),
])
def test_bad_avx2_tiles_are_refused(tiling, message):
    with pytest.raises(ValueError, match=message):
        G.gemm_prim_func(32, 32, None, AVX2, tiling)


def test_vnni_tile_over_the_stack_limit_is_refused():
    with pytest.raises(ValueError, match="1024 bytes of accumulators"):
        G.gemm_prim_func(32, 32, None, AVX512_VNNI, Tiling(mr=8, nr=48))


@pytest.mark.parametrize("isa", RUNNABLE, ids=lambda i: i.name)
def test_tiles_tuning_measures_are_legal_and_bit_exact(isa):
    m, n, k = 29, 50, 9
    tilings = ranked_tilings(isa, m, n, k, count=6, threads=2)
    assert tilings[0] == choose_tiling(isa, m, n, k, threads=2)  # the cost model's pick is always measured
    assert len({(t.mr, t.nr) for t in tilings}) == 6 and len({t.nr for t in tilings}) > 1
    a, w, bias, mult = problem(m, n, k)
    for tiling in tilings:
        kernel = G.build_gemm(m, w, bias, mult, REQUANTS[1], isa=isa, tiling=tiling)
        assert_exact(kernel, a, w, bias, mult, REQUANTS[1], rows=[m])


def test_kernel_macros_find_their_parser_without_frame_infos(monkeypatch):
    """qcompile/backends/tvm/__init__.py: a TVMScript macro call finds its parser walking up the frames;
    inspect.getouterframes (a FrameInfo and a module lookup per frame) cost 8 of MiniLM's 39 s x86 build.
    The one call left is prim_func's own inspect.stack()."""
    import inspect

    calls = []
    frames = inspect.getouterframes

    def counted(*args, **kwargs):
        calls.append(1)
        return frames(*args, **kwargs)

    monkeypatch.setattr(inspect, "getouterframes", counted)
    G.gemm_prim_func(32, 32, None, AVX2, Tiling(4, 8))  # AVX2 widens A to int16 in a macro
    assert len(calls) == 1
