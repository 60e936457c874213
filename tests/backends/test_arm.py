"""target="arm": the integer graph cross-compiled for aarch64; instruction selection read back with objdump."""
import re
import subprocess

import pytest
import torch

import qcompile
from qcompile.errors import UsageError
from tests.models import TinyResNet


def _functions(library) -> dict[str, list[str]]:
    """Function name -> its instruction mnemonics, from aarch64-linux-gnu-objdump."""
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(library)],
                         capture_output=True, text=True, check=True).stdout
    funcs, current = {}, None
    for line in asm.splitlines():
        if m := re.match(r"^[0-9a-f]+ <(.+)>:$", line):
            current = funcs.setdefault(m[1], [])
        elif current is not None and line.count("\t") >= 1 and line.strip():
            current.append(line.split("\t")[1].strip())
    return funcs


@pytest.fixture(scope="module", autouse=True)
def cross_toolchain():
    """aarch64-linux-gnu-g++ / objdump, installed by the emulator's set-up (as `make arm-emulator` does)."""
    from qcompile.backends.tvm import arm_emulator

    arm_emulator.setup()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 32, 32)
    return model, (x,), [x, torch.randn(1, 3, 32, 32)]


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
    from qcompile.backends.tvm import arm_emulator

    monkeypatch.setattr(arm_emulator, "running_server", lambda: None)
    model, ex, cal = resnet
    cm = qcompile.compile(model, ex, target="arm", calibration=cal, progress=False)
    with pytest.raises(UsageError, match="make arm-emulator.*remote='host:port'"):
        cm(*ex)
    with pytest.raises(UsageError, match="tracker= needs key="):
        qcompile.compile(model, ex, target="arm", calibration=cal, progress=False, tracker="127.0.0.1:9190")
    with pytest.raises(UsageError, match="host:port"):
        qcompile.compile(model, ex, target="arm", calibration=cal, progress=False, remote="nowhere")(*ex)
