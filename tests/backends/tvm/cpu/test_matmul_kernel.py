"""qc.matmul_int (activation x activation, batched) on the dot-product kernel (matmul_kernel.py): bit-exact
with the reference on odd shapes and zero points on x86 (vpdpbusd where the host has AVX512-VNNI), sdot in
the ARM build's matmul kernels (none for arm-a55) and bit-exact runs on the emulated device."""
import copy

import pytest
import torch

import qcompile
from qcompile.backends.tvm.cpu import matmul_kernel
from qcompile.backends.tvm.cpu import pipeline as cpu_pipeline
from qcompile.backends.tvm.cpu.isa import AVX512_VNNI, NEON_DOTPROD, host_target
from qcompile.backends.tvm.x86.backend import X86Backend
from tests.backends.tvm.matmul_cases import CASES, I8, U8, matmul_graph, random_operand
from tests.models import Attention

qc = torch.ops.qcompile


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_x86_matmul_int_bit_exact_on_odd_shapes(case):
    shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant = case
    gm = matmul_graph(shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant)
    funcs = [gv.name_hint for gv in cpu_pipeline.lower(gm, host_target()).functions]
    if matmul_kernel.supported_isa(host_target()) is not None:  # AVX512-VNNI hosts: the kernel, not the TE reduction
        assert any(f.startswith("matmul_") for f in funcs) and any(f.startswith("pack_b_") for f in funcs), funcs
    runner = X86Backend().build(gm)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        a, b = random_operand(shape_a, dtype_a, gen), random_operand(shape_b, dtype_b, gen)
        want = gm(a, b)[0]  # the graph runs the reference integer ops
        assert torch.equal(runner(a, b)[0], want)


def test_extreme_operands_stay_exact():
    """All-255 uint8 against all -128 int8 with zero points at the opposite ends: the largest terms."""
    gm = matmul_graph((1, 4, 64), (1, 64, 8), U8, I8, 0, 127)
    a, b = torch.full((1, 4, 64), 255, dtype=U8), torch.full((1, 64, 8), -128, dtype=I8)
    assert torch.equal(X86Backend().build(gm)(a, b)[0], gm(a, b)[0])


def test_isa_choice():
    assert matmul_kernel.supported_isa({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}) is NEON_DOTPROD
    assert matmul_kernel.supported_isa({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "-dotprod"]}) is None
    assert matmul_kernel.supported_isa({"kind": "llvm", "mcpu": "cascadelake"}) is AVX512_VNNI
    assert matmul_kernel.supported_isa({"kind": "llvm", "mcpu": "haswell"}) is None  # AVX2's int16 pairs: TE stays
    assert matmul_kernel.supported_isa(None) is None


# ---------------------------------------------------------------- ARM
@pytest.fixture(scope="module")
def attention():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 32)  # seq 7: P.V has K = 7 (padded to 8), both products a ragged N
    return Attention().eval(), (x,), [torch.randn(2, 7, 32) for _ in range(3)]


def _arm_functions(cm, path):
    from qcompile.backends.tvm.arm.instruction_counts import functions

    return functions(cm.save(path) / "model.so")


def test_arm_matmul_kernels_use_sdot_and_a55_never(attention, cross_toolchain, tmp_path):
    model, ex, cal = attention
    ref = qcompile.compile(model, ex, calibration=cal, progress=False)
    assert sum(n.target == qc.matmul_int.default for n in ref.graph_module.graph.nodes) == 2
    arm = _arm_functions(qcompile.compile(model, ex, target="arm", calibration=cal, progress=False), tmp_path / "arm")
    kernels = {n: ops for n, ops in arm.items() if n.startswith("matmul_") and n.endswith("_compute_")}
    assert len(kernels) == 2 and all("sdot" in ops for ops in kernels.values()), list(kernels)
    a55 = _arm_functions(qcompile.compile(model, ex, target="arm-a55", calibration=cal, progress=False), tmp_path / "a55")
    assert any("matmul" in n for n in a55) and not any("sdot" in ops for ops in a55.values())


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}-{c[2]}-{c[3]}" for c in CASES])
def test_arm_matmul_int_bit_exact_on_odd_shapes(case, arm_device, cross_toolchain):
    from qcompile.backends.tvm.arm.backend import ArmBackend

    shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant = case
    gm = matmul_graph(shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant)
    backend = ArmBackend(remote="%s:%d" % arm_device)
    funcs = [gv.name_hint for gv in cpu_pipeline.lower(gm, backend.target).functions]
    assert any(f.startswith("matmul_") for f in funcs) and any(f.startswith("pack_b_") for f in funcs), funcs
    runner = backend.build(gm)
    gen = torch.Generator().manual_seed(1)
    a, b = random_operand(shape_a, dtype_a, gen), random_operand(shape_b, dtype_b, gen)
    assert torch.equal(runner(a, b)[0], gm(a, b)[0])


@pytest.mark.parametrize("target", ["arm", "arm-a55"])
def test_attention_runs_bit_exact_on_the_emulated_device(attention, arm_device, target):
    model, ex, cal = attention
    ref = qcompile.compile(model, ex, calibration=cal, progress=False)
    cm = qcompile.compile(model, ex, target=target, calibration=cal, progress=False)
    for seed in range(2):
        x = torch.randn(2, 7, 32, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(cm(x), ref(x))


@pytest.fixture(scope="module")
def eager_minilm(minilm):
    """The real all-MiniLM-L6-v2 with BERT's eager attention (explicit matmuls, 12 matmul_int: 6 Q.K^T
    with two zero points, 6 P.V with a fused requantize), and its reference compile."""
    emb, batches = minilm
    emb = copy.deepcopy(emb)
    emb.m.config._attn_implementation = "eager"  # the fixture's model uses sdpa, a float island
    ref = qcompile.compile(emb, batches[0], calibration=batches[1:], progress=False)
    assert sum(n.target == qc.matmul_int.default for n in ref.graph_module.graph.nodes) == 12
    return emb, batches, ref


def test_minilm_with_eager_attention_runs_bit_exact_on_the_emulated_device(eager_minilm, arm_device):
    emb, batches, ref = eager_minilm
    cm = qcompile.compile(emb, batches[0], target="arm", calibration=batches[1:], progress=False)
    for bt in batches[:2]:
        assert torch.equal(cm(*bt), ref(*bt))


def test_minilm_with_eager_attention_bit_exact_on_x86(eager_minilm):
    emb, batches, ref = eager_minilm
    cm = qcompile.compile(emb, batches[0], target="x86", calibration=batches[1:], progress=False)
    for bt in batches:
        assert torch.equal(cm(*bt), ref(*bt))


@pytest.mark.parametrize("target", ["x86", "arm"])
def test_dynamic_batch_and_length_one_kernel_bit_exact(attention, target, request):
    """Every size of the kernel is symbolic: one build serves all batch sizes and sequence lengths
    (K of P.V = the length: multiples of 4 and 16 and not, N ragged or not)."""
    if target == "arm":
        request.getfixturevalue("arm_device")
        request.getfixturevalue("cross_toolchain")
    model, ex, cal = attention
    dims = {0: torch.export.Dim("batch", min=1, max=4), 1: torch.export.Dim("length", min=2, max=40)}
    kwargs = dict(calibration=cal, dynamic_shapes={"x": dims}, progress=False)
    ref = qcompile.compile(model, ex, target="reference", **kwargs)
    cm = qcompile.compile(model, ex, target=target, **kwargs)
    built_for = host_target() if target == "x86" else {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]}
    if matmul_kernel.supported_isa(built_for) is not None:
        funcs = [gv.name_hint for gv in cpu_pipeline.lower(cm.graph_module, built_for).functions]
        assert sum(f.startswith("matmul_") for f in funcs) == 2, funcs
    for i, (b, s) in enumerate([(1, 2), (2, 7), (3, 16), (4, 33), (1, 40)]):
        x = torch.randn(b, s, 32, generator=torch.Generator().manual_seed(i))
        assert torch.equal(cm(x), ref(x)), (b, s)
