"""target="x86": TVM-built kernels must match the reference backend exactly."""
import subprocess
import sys

import pytest
import torch
from torch import nn

import qcompile
from qcompile.backends.tvm.lower import to_relax
from qcompile.backends.tvm.x86 import host_target
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
    kernels = {gv.name_hint for gv in to_relax(x86.graph_module, target=host_target()).get_global_vars()}
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
        "cm = qcompile.load(sys.argv[1] + '/mnv2')\n"
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
        qcompile.load(tmp_path / "a")


def test_minilm_bit_exact(minilm):
    emb, batches = minilm
    ref, x86 = _both(emb, batches[0], batches[1:])
    for bt in batches:
        assert torch.equal(x86(*bt), ref(*bt))


def test_dynamic_shapes_are_refused_with_a_clear_error():
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="dynamic_shapes is supported by target='reference'"):
        qcompile.compile(ConvBnRelu().eval(), (x,), target="x86", calibration=[x],
                         dynamic_shapes={"x": {0: torch.export.Dim("b")}})
