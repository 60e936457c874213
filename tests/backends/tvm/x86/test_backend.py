"""target="x86": TVM-built kernels must match the reference backend exactly."""
import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

import qcompile
from qcompile.backends.tvm.cpu import pipeline as cpu_pipeline
from qcompile.backends.tvm.cpu.isa import host_target
from tests.models import ConvBnRelu, OpZoo, TinyResNet


def _both(model, example, calibration):
    ref = qcompile.compile(model, example, target="reference", calibration=calibration, progress=False)
    x86 = qcompile.compile(model, example, target="x86", calibration=calibration, progress=False)
    return ref, x86


class ConvStack(nn.Module):
    """conv -> relu -> conv: the second conv's uint8 input has a non-zero zero point after the first."""

    def __init__(self, cin, cout, k, stride, groups):
        super().__init__()
        self.a = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups)
        self.b = nn.Conv2d(cout, 5, 1)

    def forward(self, x):
        return self.b(torch.nn.functional.hardtanh(self.a(x), -1.0, 3.0))


@pytest.mark.parametrize(
    "cin, cout, k, stride, groups",
    [
        (3, 13, 1, 1, 1), (13, 20, 3, 1, 1), (20, 20, 3, 2, 20), (7, 14, 5, 1, 7),
        (6, 9, 7, 2, 3), (17, 17, 5, 2, 17), (4, 33, 3, 1, 1),
    ],
)
def test_conv_kernels_bit_exact_on_odd_shapes(cin, cout, k, stride, groups):
    torch.manual_seed(cin * 100 + k)
    model = ConvStack(cin, cout, k, stride, groups).eval()
    x = torch.randn(2, cin, 15, 11)
    ref, x86 = _both(model, (x,), [torch.randn(2, cin, 15, 11) for _ in range(2)])
    probe = torch.randn(2, cin, 15, 11)
    assert torch.equal(x86(probe), ref(probe))


class LayoutBoundaries(nn.Module):
    """Channels-last values meeting every kind of consumer: max pool, a float island reducing over
    channels, an output taken straight from a conv, a 5x5 ungrouped conv with stride and padding."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 5, 2, 2)
        self.mid = nn.Conv2d(12, 19, 3, 1, 1)

    def forward(self, x):
        a = torch.relu(self.stem(x))
        b = self.mid(nn.functional.max_pool2d(a, 3, 2, 1))
        return b, torch.softmax(b, dim=1).sum(dim=(2, 3))


def test_channels_last_values_reach_every_consumer_exactly():
    torch.manual_seed(3)
    model = LayoutBoundaries().eval()
    x = torch.randn(2, 3, 21, 17)
    ref, x86 = _both(model, (x,), [torch.randn(2, 3, 21, 17) for _ in range(3)])
    probe = torch.randn(2, 3, 21, 17)
    got, want = x86(probe), ref(probe)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-6, atol=1e-6)
    kernels = {gv.name_hint for gv in cpu_pipeline.lower(x86.graph_module, host_target()).get_global_vars()}
    assert any(k.startswith("im2col") for k in kernels) and any(k.startswith("gemm_") for k in kernels)


def test_resnet_and_op_zoo_bit_exact():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 64, 64)
    ref, x86 = _both(model, (x,), [torch.randn(2, 3, 64, 64) for _ in range(3)])
    assert torch.equal(x86(x), ref(x))

    zoo = OpZoo().eval()
    ex = (torch.randn(2, 3, 8, 8), torch.randint(0, 20, (2, 5)))
    cal = [(torch.randn(2, 3, 8, 8), torch.randint(0, 20, (2, 5))) for _ in range(3)]
    ref, x86 = _both(zoo, ex, cal)
    assert torch.equal(x86(*ex), ref(*ex))  # float islands (layer_norm, softmax) included


def test_mobilenet_v2_bit_exact_and_reloads_in_a_fresh_process(mobilenet, tmp_path):
    model, example, calibration, x, *_ = mobilenet
    ref, x86 = _both(model, example, calibration[:8])
    views = x[:6]
    outs = torch.cat([x86(views[i:i + 1]) for i in range(6)])
    assert torch.equal(outs, torch.cat([ref(views[i:i + 1]) for i in range(6)]))
    x86.save(tmp_path / "mnv2")
    torch.save(views[:1].clone(), tmp_path / "input.pt")
    torch.save(outs[:1].clone(), tmp_path / "expected.pt")
    script = (
        "import sys, torch, qcompile\n"
        "cm = qcompile.load(sys.argv[1] + '/mnv2', trust_native_code=True)\n"
        "x = torch.load(sys.argv[1] + '/input.pt'); want = torch.load(sys.argv[1] + '/expected.pt')\n"
        "assert cm.backend == 'x86' and torch.equal(cm(x), want)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_x86_artifact_without_library_is_rejected(tmp_path):
    model = ConvBnRelu().eval()
    x = torch.randn(2, 3, 8, 8)
    cm = qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False)
    cm.save(tmp_path / "a")
    (tmp_path / "a" / "model.so").unlink()
    with pytest.raises(qcompile.ArtifactError, match="model.so"):
        qcompile.load(tmp_path / "a", trust_native_code=True)


def test_x86_artifact_loads_its_library_only_with_consent_and_intact(tmp_path):
    model = ConvBnRelu().eval()
    x = torch.randn(2, 3, 8, 8)
    cm = qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False)
    cm.save(tmp_path / "a")
    with pytest.raises(qcompile.ArtifactError, match="holds native code .* trust_native_code=True"):
        qcompile.load(tmp_path / "a")
    library = tmp_path / "a" / "model.so"
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte: without the digest check, dlopen may crash the process
    library.write_bytes(bytes(data))
    with pytest.raises(qcompile.ArtifactError, match="model.so does not match its SHA-256"):
        qcompile.load(tmp_path / "a", trust_native_code=True)
    library.write_bytes(library.read_bytes()[: len(data) // 3])  # truncated
    with pytest.raises(qcompile.ArtifactError, match="model.so does not match its SHA-256"):
        qcompile.load(tmp_path / "a", trust_native_code=True)


def test_minilm_bit_exact(minilm):
    emb, batches = minilm
    ref, x86 = _both(emb, batches[0], batches[1:])
    for bt in batches:
        assert torch.equal(x86(*bt), ref(*bt))


def _symbolic_dims(cm) -> list[str]:
    """Names of the symbolic dims in the Relax main's parameters that `cm`'s integer graph lowers to."""
    from tvm import tirx

    from qcompile.backends.tvm.relax_lowering import to_relax

    params = to_relax(cm.graph_module)["main"].params
    return [d.name for p in params for d in p.ty.shape.values if isinstance(d, tirx.Var)]


def _build_static(cm, *inputs):
    """cm's integer graph built by the x86 backend for the inputs' exact shapes."""
    from qcompile.backends.tvm.x86.backend import X86Backend
    from qcompile.ir import meta

    gm = copy.deepcopy(cm.graph_module)
    for p, x in zip(gm.graph.find_nodes(op="placeholder"), inputs):
        meta.set_input_dims(p, list(x.shape))
    return X86Backend().build(gm)


def _sentences(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2:] = 0  # a padded sentence in each batch
    return ids, mask


def test_minilm_with_dynamic_batch_and_length_is_compiled_once(minilm, tmp_path):
    emb, batches = minilm
    dims = {0: torch.export.Dim("batch", min=1, max=8), 1: torch.export.Dim("length", min=2, max=64)}
    kwargs = dict(calibration=batches[1:], dynamic_shapes={"ids": dims, "mask": dims}, progress=False)
    ref = qcompile.compile(emb, batches[0], target="reference", **kwargs)
    x86 = qcompile.compile(emb, batches[0], target="x86", **kwargs)
    assert len(set(_symbolic_dims(x86))) == 2  # batch and length: one Var each, shared by ids and mask
    for bt in batches:
        assert torch.equal(x86(*bt), ref(*bt))
    shapes = [(1, 5), (2, 17), (3, 64)]
    outs = [x86(*_sentences(b, n, i)) for i, (b, n) in enumerate(shapes)]
    for i, ((b, n), out) in enumerate(zip(shapes, outs)):
        assert torch.nn.functional.cosine_similarity(out, ref(*_sentences(b, n, i))).min() > 0.99  # same model
    # Bit-exact with a module built for this very shape (one odd batch and length: each static build of
    # MiniLM costs 15 s); against PyTorch the float islands (layer_norm, softmax, the mean pooling) round
    # in a different order at some lengths.
    x = _sentences(2, 17, 1)
    assert torch.equal(outs[1], _build_static(x86, *x)(*x)[0])
    with pytest.raises(ValueError, match=r"dimension 1 is 65, outside the range \[2, 64\]"):
        x86(*_sentences(1, 65, 0))
    with pytest.raises(ValueError, match="dynamic_shapes declares them the same size"):
        x86(_sentences(1, 6, 0)[0], _sentences(1, 7, 0)[1])

    x86.save(tmp_path / "minilm")
    loaded = qcompile.load(tmp_path / "minilm", trust_native_code=True)
    for i, ((b, n), out) in enumerate(zip(shapes, outs)):
        assert torch.equal(loaded(*_sentences(b, n, i)), out)
    with pytest.raises(ValueError, match="outside the range"):
        loaded(*_sentences(9, 8, 0))


def test_conv_model_with_dynamic_batch_bit_exact():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(4, 3, 32, 32)
    kwargs = dict(calibration=[torch.randn(4, 3, 32, 32) for _ in range(2)],
                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=16)}}, progress=False)
    ref = qcompile.compile(model, (x,), target="reference", **kwargs)
    x86 = qcompile.compile(model, (x,), target="x86", **kwargs)
    assert len(_symbolic_dims(x86)) == 1
    for batch in (1, 3, 16):
        probe = torch.randn(batch, 3, 32, 32)
        assert torch.equal(x86(probe), ref(probe))
    with pytest.raises(ValueError, match=r"dimension 0 is 17, outside the range \[1, 16\]"):
        x86(torch.randn(17, 3, 32, 32))
    with pytest.raises(qcompile.UsageError, match="dynamic dimensions: pass benchmark\(\) the inputs"):
        x86.benchmark()  # no shape to make zeros of
    assert x86.benchmark(torch.randn(3, 3, 32, 32), number=2, repeat=2).median_ms > 0


def test_report_profiles_every_kernel_and_names_its_layers(tmp_path):
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 32, 32)
    cm = qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False)
    report = cm.report()
    kernels = report.kernels
    assert kernels and all(k["us"] > 0 for k in kernels)
    rows = {r.name: r for r in report.rows}
    convs = [r for r in report.rows if r.op == "conv2d"]
    assert convs and all(r.time_us and r.time_us > 0 for r in convs)
    # Every conv row's time comes from kernels that name it, and no kernel is counted twice.
    attributed = sum(k["us"] for k in kernels if any(name in rows for name in k["layers"]))
    assert sum(r.time_us or 0 for r in report.rows) == pytest.approx(attributed)
    assert "µs" in str(report) and "share" in str(report)
    # Every conv kernel (the im2col gather and the GEMM of an ungrouped conv, too) is charged to a layer.
    convs = [k for k in kernels if "conv2d" in k["kernel"]]
    assert any("im2col" in k["kernel"] for k in convs) and all(k["layers"] for k in convs)
    cm.save(tmp_path / "a")
    loaded = qcompile.load(tmp_path / "a", trust_native_code=True)
    assert [k["layers"] for k in loaded.report().kernels] == [k["layers"] for k in kernels]
    (tmp_path / "a" / "manifest.json").write_text(
        (tmp_path / "a" / "manifest.json").read_text().replace('"kernels"', '"dropped"'))
    reprofiled = qcompile.load(tmp_path / "a", trust_native_code=True).report().kernels  # recomputed from the saved library
    assert [k["layers"] for k in reprofiled] == [k["layers"] for k in kernels]


def test_layers_slower_than_float_fall_back_and_stay_bit_exact():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 32, 32)
    # An impossible required speed-up makes every integer conv/linear "lose" against its float version.
    cm = qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False,
                          float_fallback=True, min_speedup=1e9)
    fell = {r.name: r.note for r in cm.report().float_layers if "than float" in r.note}
    assert "relu_" in fell and "µs vs" in fell["relu_"]  # the stem conv (fused relu) fell back, with both times
    assert all(r.bits == "float" for r in cm.report().rows if r.op == "conv2d")
    ref = qcompile.compile(model, (x,), calibration=[x], progress=False,
                           config=qcompile.QuantConfig(float_layers=fell))
    # Same graph as the reference compiled with those layers float; the float convs now sum in TVM's
    # order instead of PyTorch's, so only float rounding may differ.
    assert str(cm.graph_module.code) == str(ref.graph_module.code)
    torch.testing.assert_close(cm(x), ref(x), rtol=1e-4, atol=1e-5)


def test_float_layers_and_backend_options_are_checked():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="float_layers names no quantizable layer: nope"):
        qcompile.compile(ConvBnRelu().eval(), (x,), calibration=[x], progress=False,
                         config=qcompile.QuantConfig(float_layers=["nope"]))
    with pytest.raises(ValueError, match="target 'x86' has no option.*float_fallback"):
        qcompile.compile(ConvBnRelu().eval(), (x,), target="x86", calibration=[x], tnue=True)
    with pytest.raises(ValueError, match="target 'reference' has no option"):
        qcompile.compile(ConvBnRelu().eval(), (x,), calibration=[x], float_fallback=True)


def test_benchmark_times_whole_calls_and_the_reference_backend_says_it_cannot():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    ref, x86 = _both(TinyResNet().eval(), (x,), [x])
    result = x86.benchmark(x, number=3, repeat=4)
    assert not result.emulated and result.repeat == 4 and result.number == 3
    assert 0 < result.median_ms < 10_000 and result.std_ms >= 0
    assert x86.benchmark().median_ms > 0  # zeros of the compiled shape
    with pytest.raises(ValueError, match=r"expected float32\[1, 3, 32, 32\]"):
        x86.benchmark(torch.randn(1, 3, 16, 16))
    with pytest.raises(qcompile.UsageError, match="does not time itself"):
        ref.benchmark()
