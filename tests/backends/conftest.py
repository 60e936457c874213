"""Fixtures of the backend tests."""
import pytest
import torch

from tests.models import TinyResNet


@pytest.fixture(scope="session")
def cross_toolchain():
    """aarch64-linux-gnu-g++ / objdump, installed by the emulator's set-up (as `make arm-emulator` does)."""
    from qcompile.backends.tvm.arm import emulator

    emulator.setup()


@pytest.fixture(scope="module")
def resnet():
    """TinyResNet, an example input and two calibration batches."""
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(1, 3, 32, 32)
    return model, (x,), [x, torch.randn(1, 3, 32, 32)]
