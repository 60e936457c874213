"""The emulated aarch64 device: the fixture runs the same set-up as `make arm-emulator`
(tools/arm_emulator.sh: Debian cross toolchain + qemu-user, arm64 sysroot and aarch64 wheels under .arm/),
starts one TVM RPC server under qemu-aarch64 for the session, and stops it at the end. A library
cross-compiled here must run there and agree with numpy exactly."""
import os
import subprocess

import numpy as np
import pytest

from qcompile.backends.tvm.arm import emulator as E


@pytest.mark.parametrize("m,n,k", [(4, 16, 32), (3, 7, 19), (1, 1, 1)])
def test_int8_matmul_runs_bit_exact_on_emulated_aarch64(arm_device, tmp_path, m, n, k):
    got, want = E.check_int8_matmul(*arm_device, str(tmp_path), m, n, k)
    assert got.dtype == np.int32 and np.array_equal(got, want)


def test_dotprod_target_selects_sdot(tmp_path):
    """What runs on the emulator is what a Cortex-A76 would run: LLVM picks the int8 dot product."""
    path = E.build_int8_matmul(str(tmp_path / "mm.so"), 4, 16, 32)
    asm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", path], check=True, stdout=subprocess.PIPE,
                         text=True).stdout
    assert "sdot" in asm
    assert os.path.getsize(path) > 0
