"""Dynamic aarch64 instruction counts on the emulated device (arm_instructions.py, tools/insn_count.c):
exact for a kernel whose sdot count its loop nest fixes, and "arm" against "arm-a55" on an int8 Linear."""
import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import tirx as T
from tvm.support import cc

import qcompile
from qcompile.backends.tvm.arm import emulator as arm_emulator
from qcompile.backends.tvm.arm.instruction_counts import count_instructions


@pytest.fixture(scope="module", autouse=True)
def emulator():
    """Cross toolchain, qemu-user, the aarch64 Python and the counting plugin (as `make arm-emulator` does)."""
    arm_emulator.setup()


def _sdot_matmul(m: int, n: int, k: int):
    """C[m, n] = A[m, k] . B^T with exactly one sdot per (row, 4 columns, 4 k): m * n/4 * k/4 of them.
    B comes packed as [n/4, k/4, 16] (4 columns x 4 k, k fastest), the 16 bytes one sdot reads."""
    sdot, ramp = "llvm.aarch64.neon.sdot.v4i32.v16i8", T.Ramp

    @T.prim_func
    def sdot_matmul(a: T.Buffer((m, k), "int8"), b: T.Buffer((n // 4, k // 4, 16), "int8"),
                    c: T.Buffer((m, n), "int32")):
        T.func_attr({"tir.noalias": True})
        for i, jo in T.grid(m, n // 4):
            c[i, ramp(jo * 4, 1, 4)] = T.Broadcast(0, 4)
            for ko in range(k // 4):
                a_word = T.reinterpret("int32", a[i, ramp(ko * 4, 1, 4)])  # A's 4 bytes, to every lane
                c[i, ramp(jo * 4, 1, 4)] = T.call_llvm_pure_intrin(
                    "int32x4", sdot, c[i, ramp(jo * 4, 1, 4)],
                    T.reinterpret("int8x16", T.Broadcast(a_word, 4)), b[jo, ko, ramp(0, 1, 16)])

    return sdot_matmul


def _library_with_main(func, shapes, out_shape, path):
    """A Relax `main` that calls `func` once, cross-compiled for the dot-product target."""
    bb = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(s, "int8")) for i, s in enumerate(shapes)]
    with bb.function("main", params):
        kernel = bb.add_func(func, "sdot_matmul")
        out = bb.emit(relax.call_tir(kernel, params, relax.TensorType(out_shape, "int32")))
        bb.emit_func_output(out)
    ex = tvm.compile(bb.get(), target=tvm.target.Target(arm_emulator.DOTPROD_TARGET))
    ex.export_library(str(path), fcompile=cc.cross_compiler(arm_emulator.CROSS_CXX))
    return path


def test_sdot_count_is_what_the_loop_nest_implies(tmp_path):
    m, n, k = 3, 8, 64
    library = _library_with_main(_sdot_matmul(m, n, k), [(m, k), (n // 4, k // 4, 16)], (m, n), tmp_path / "mm.so")
    counts = count_instructions(library, [np.ones((m, k), np.int8), np.ones((n // 4, k // 4, 16), np.int8)])
    kernel = counts.kernels["sdot_matmul"]
    assert kernel.calls == 1
    assert kernel.mnemonics["sdot"] == m * (n // 4) * (k // 4) == counts.count("sdot")
    assert kernel.instructions > kernel.mnemonics["sdot"]  # loads, loop control, the wrapper


def test_dot_product_build_runs_an_int8_linear_in_fewer_instructions_than_a55(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64)).eval()
    x = torch.randn(8, 256)
    counts = {}
    for target in ("arm", "arm-a55"):
        cm = qcompile.compile(model, (x,), target=target, calibration=[x], progress=False)
        counts[target] = count_instructions(cm.save(tmp_path / target), [x])
    arm, a55 = counts["arm"], counts["arm-a55"]
    # 8 x 256 x 64 multiply-adds: with sdot (4 per lane, 4 lanes) at least 8 * 256 * 64 / 16 of them
    assert arm.count("sdot") >= 8 * 256 * 64 // 16
    assert a55.count("sdot") == 0
    assert all(k.instructions > 0 for k in arm.kernels.values() if k.calls)
    assert arm.total < a55.total, (arm.total, a55.total)
