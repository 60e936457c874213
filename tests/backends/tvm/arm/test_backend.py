"""target="arm": the integer graph cross-compiled for aarch64; instruction selection read back with objdump."""
import pytest
import torch

import qcompile
from qcompile.backends.tvm.arm.instruction_counts import functions as _functions
from qcompile.errors import UsageError
from tests.models import DepthwiseBlocks

pytestmark = pytest.mark.usefixtures("cross_toolchain")


def _saved(resnet, target, tmp_path):
    model, ex, cal = resnet
    cm = qcompile.compile(model, ex, target=target, calibration=cal, progress=False)
    return _functions(cm.save(tmp_path / target) / "model.so")


def test_dot_product_target_runs_every_gemm_on_sdot_and_a55_never(resnet, tmp_path):
    dotprod = _saved(resnet, "arm", tmp_path)
    gemms = {name: ops for name, ops in dotprod.items() if name.startswith("gemm_") and name.endswith("_compute_")}
    assert len(gemms) == 7  # five ungrouped convs (1x1 and im2col), the stem, the classifier
    assert all("sdot" in ops for ops in gemms.values()), {n: "sdot" in ops for n, ops in gemms.items()}
    a55 = _saved(resnet, "arm-a55", tmp_path)
    assert not any("sdot" in ops for ops in a55.values())
    assert any("smull" in ops or "smull2" in ops for ops in a55.values())  # NEON widening multiplies instead


def test_calling_without_a_device_says_how_to_get_one(resnet, monkeypatch, tmp_path):
    from qcompile.backends.tvm.arm import emulator

    monkeypatch.setattr(emulator, "running_server", lambda: None)
    model, ex, cal = resnet
    cm = qcompile.compile(model, ex, target="arm", calibration=cal, progress=False)
    with pytest.raises(UsageError, match="make arm-emulator.*remote='host:port'"):
        cm(*ex)
    with pytest.raises(UsageError, match="tracker= needs key="):
        qcompile.compile(model, ex, target="arm", calibration=cal, progress=False, tracker="127.0.0.1:9190")
    with pytest.raises(UsageError, match="host:port"):
        qcompile.compile(model, ex, target="arm", calibration=cal, progress=False, remote="nowhere")(*ex)


@pytest.fixture(scope="module")
def depthwise_blocks():
    torch.manual_seed(0)
    model = DepthwiseBlocks().eval()
    x = torch.randn(1, 3, 17, 19)
    return model, (x,), [x, torch.randn(1, 3, 17, 19)]


def _depthwise_convs(cm) -> int:
    return sum(1 for n in cm.graph_module.graph.nodes if n.target is torch.ops.qcompile.conv2d_int.default and n.args[8] > 1)


def _compiled_functions(model_ex_cal, target, tmp_path, **kw):
    model, ex, cal = model_ex_cal
    cm = qcompile.compile(model, ex, target=target, calibration=cal, progress=False, **kw)
    return cm, _functions(cm.save(tmp_path / target) / "model.so")


def test_dot_product_target_runs_every_depthwise_conv_on_sdot_and_a55_never(depthwise_blocks, tmp_path):
    cm, dotprod = _compiled_functions(depthwise_blocks, "arm", tmp_path)
    kernels = {name: ops for name, ops in dotprod.items() if name.startswith("depthwise_") and name.endswith("_compute_")}
    assert len(kernels) == _depthwise_convs(cm) == 4
    assert all("sdot" in ops for ops in kernels.values()), {n: "sdot" in ops for n, ops in kernels.items()}
    assert not any("conv2d" in name and not name.startswith(("depthwise_", "gemm_", "__tvm_ffi_")) and "im2col" not in name
                   for name in dotprod)  # no depthwise conv left to the generic TE kernel
    _, a55 = _compiled_functions(depthwise_blocks, "arm-a55", tmp_path)
    assert not any(name.startswith("depthwise_") for name in a55)
    assert not any("sdot" in ops for ops in a55.values())


def test_depthwise_sdot_kernels_are_bit_exact_on_the_device(depthwise_blocks, arm_device):
    model, _, _ = depthwise_blocks
    host, port = arm_device
    torch.manual_seed(1)
    ex, cal = (torch.randn(2, 3, 17, 19),), [torch.randn(2, 3, 17, 19) for _ in range(2)]
    # A free batch: the kernel's batch (and image size) are run-time sizes.
    kw = dict(calibration=cal, progress=False, dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4)}})
    cm = qcompile.compile(model, ex, target="arm", remote=f"{host}:{port}", **kw)
    ref = qcompile.compile(model, ex, target="reference", **kw)
    for x in (ex[0], 3 * torch.randn(3, 3, 17, 19), torch.rand(1, 3, 17, 19)):  # 3x: the clamps saturate
        assert torch.equal(cm(x), ref(x))


def test_depthwise_sdot_kernel_is_planned_only_for_dot_product_arm_targets(depthwise_blocks):
    from qcompile.backends.tvm.arm.backend import VARIANTS
    from qcompile.backends.tvm.cpu import depthwise_lowering
    from qcompile.backends.tvm.cpu.isa import host_target

    model, ex, cal = depthwise_blocks
    gm = qcompile.compile(model, ex, target="reference", calibration=cal, progress=False).graph_module
    planned = lambda target: len(depthwise_lowering.plan(gm, target))
    assert planned(VARIANTS["arm"]) == planned(VARIANTS["arm-i8mm"]) == 4
    assert planned(VARIANTS["arm-a55"]) == planned(host_target()) == planned(None) == 0



def _reference_and(resnet, target, **options):
    model, ex, cal = resnet
    ref = qcompile.compile(model, ex, calibration=cal, progress=False)
    return ref, qcompile.compile(model, ex, target=target, calibration=cal, progress=False, **options)


@pytest.mark.parametrize("target", ["arm", "arm-a55", "arm-i8mm"])
def test_tiny_resnet_runs_bit_exact_on_the_emulated_device(resnet, arm_device, target):
    ref, cm = _reference_and(resnet, target)  # no remote=: the running emulator is found by itself
    for seed in range(2):
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(cm(x), ref(x))


def test_mobilenet_v2_on_the_emulated_device_matches_the_reference(mobilenet, arm_device, tmp_path):
    """Real weights, "arm" on the emulated device, bit-exact with the reference (its
    float output is a dequantized integer tensor, so equal floats mean equal integers), also reloaded."""
    model, example, calibration, *_ = mobilenet
    remote = "%s:%d" % arm_device
    want = qcompile.compile(model, example, calibration=calibration, progress=False)(*example)
    cm = qcompile.compile(model, example, target="arm", calibration=calibration, progress=False, remote=remote)
    assert torch.equal(cm(*example), want)
    saved = cm.save(tmp_path / "mnv2-arm")
    assert torch.equal(qcompile.load(saved, remote=remote, trust_native_code=True)(*example), want)
    funcs = _functions(saved / "model.so")
    gemms = {n: ops for n, ops in funcs.items() if n.startswith("gemm_") and n.endswith("_compute_")}
    assert len(gemms) >= 35 and all("sdot" in ops for ops in gemms.values())
    depthwise = {n: ops for n, ops in funcs.items() if n.startswith("depthwise_") and n.endswith("_compute_")}
    assert len(depthwise) == _depthwise_convs(cm) == 17 and all("sdot" in ops for ops in depthwise.values())


def test_benchmark_times_on_the_device_and_says_when_it_is_emulated(resnet, arm_device):
    _, cm = _reference_and(resnet, "arm")
    result = cm.benchmark(number=2, repeat=3)
    assert result.emulated and result.device == "%s:%d" % arm_device
    assert result.repeat == 3 and 0 < result.median_ms < 10_000
    assert "emulated device" in str(result)


def test_a_server_that_does_not_answer_or_is_gone_gives_a_clear_error(resnet):
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the connection waits in the backlog, as with a board busy serving someone else
    remote = "127.0.0.1:%d" % silent.getsockname()[1]
    _, cm = _reference_and(resnet, "arm", remote=remote, connect_timeout=1)
    with pytest.raises(UsageError, match="did not answer within 1 s.*one session at a time"):
        cm(torch.randn(1, 3, 32, 32))
    silent.close()
    with pytest.raises(UsageError, match=f"cannot reach the TVM RPC server at {remote}"):
        cm(torch.randn(1, 3, 32, 32))


def test_cli_benchmarks_a_saved_artifact_on_the_device(resnet, arm_device, tmp_path):
    from typer.testing import CliRunner

    from qcompile.cli import app

    _, cm = _reference_and(resnet, "arm")
    saved = cm.save(tmp_path / "tiny-arm")
    result = CliRunner().invoke(app, ["benchmark", str(saved), "--trust-native-code", "--remote", "%s:%d" % arm_device, "--number", "2",
                                      "--repeat", "2"])
    assert result.exit_code == 0, result.output
    assert "ms median" in result.output and "emulated device" in result.output
    result = CliRunner().invoke(app, ["benchmark", str(saved), "--trust-native-code", "--tracker", "127.0.0.1:1"])
    assert result.exit_code == 2 and "tracker= needs key=" in result.output
