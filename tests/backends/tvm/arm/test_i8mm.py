"""target="arm-i8mm": GEMMs on the Armv8.6 int8 matrix multiply (smmla), read back with objdump and run
bit-exactly on the emulated device (qemu-aarch64 implements i8mm)."""
import numpy as np
import pytest
import torch
import tvm
from tvm.support import cc

import qcompile
from qcompile.backends.tvm.arm.backend import CROSS_COMPILER, VARIANTS
from qcompile.backends.tvm.arm.instruction_counts import functions
from qcompile.backends.tvm.cpu import gemm_kernel as G
from qcompile.backends.tvm.cpu.isa import NEON_DOTPROD, NEON_I8MM, isa_for
from qcompile.backends.tvm.cpu.tiling import Tiling, choose_tiling, ranked_tilings

pytestmark = pytest.mark.usefixtures("cross_toolchain")


def _gemms(disassembly):
    return {name: ops for name, ops in disassembly.items() if name.startswith("gemm_") and name.endswith("_compute_")}


def test_variants_pick_their_gemm_isa():
    assert isa_for(VARIANTS["arm-i8mm"]) is NEON_I8MM
    assert isa_for(VARIANTS["arm"]) is NEON_DOTPROD
    assert isa_for(VARIANTS["arm-a55"]) is None


def test_i8mm_weight_packing_is_smmla_operand_order():
    """A 4-word vector of the packed panel is smmla's 8x2 operand: column 2c's 8 k-values, then column 2c+1's."""
    w = np.arange(-60, 60, dtype=np.int8).reshape(6, 20)  # N=6 (not a multiple of nr), K=20 (not of 8)
    packed = G.pack_weight(w, NEON_I8MM, 4)
    assert packed.shape == (2, 3, 8)
    as_bytes = packed.view(np.int8).reshape(2, 3, 4, 8)  # [panel, k-group, column, k]
    padded = np.zeros((8, 24), np.int8)
    padded[:6, :20] = w
    for p in range(2):
        for g in range(3):
            for j in range(4):
                assert np.array_equal(as_bytes[p, g, j], padded[p * 4 + j, g * 8:(g + 1) * 8])


def test_i8mm_tiles_have_row_pairs():
    for m, n, k in [(1, 10, 32), (49, 24, 144), (3136, 16, 147), (7, 13, 21)]:
        t = choose_tiling(NEON_I8MM, m, n, k, 2)
        assert t.mr % 2 == 0 and t.nr % 4 == 0
        assert all(r.mr % 2 == 0 for r in ranked_tilings(NEON_I8MM, m, n, k, 6, 2))
    with pytest.raises(ValueError, match="multiple of the 2 rows"):
        G.gemm_prim_func(8, 8, None, NEON_I8MM, Tiling(3, 4))


def test_i8mm_target_runs_every_gemm_on_smmla_and_arm_never(resnet, tmp_path):
    model, ex, cal = resnet
    libs = {}
    for target in ("arm-i8mm", "arm"):
        cm = qcompile.compile(model, ex, target=target, calibration=cal, progress=False)
        libs[target] = functions(cm.save(tmp_path / target) / "model.so")
    gemms = _gemms(libs["arm-i8mm"])
    assert len(gemms) == 7  # five ungrouped convs (1x1 and im2col), the stem, the classifier
    assert all("smmla" in ops for ops in gemms.values()), {n: "smmla" in ops for n, ops in gemms.items()}
    assert not any("sdot" in ops for ops in gemms.values())
    assert not any("smmla" in ops for ops in libs["arm"].values())
    assert all("sdot" in ops for ops in _gemms(libs["arm"]).values())


def test_i8mm_tiny_resnet_is_bit_exact_on_the_device(resnet, arm_device):
    model, ex, cal = resnet
    ref = qcompile.compile(model, ex, target="reference", calibration=cal, progress=False)
    cm = qcompile.compile(model, ex, target="arm-i8mm", calibration=cal, progress=False,
                          remote="%s:%d" % arm_device)
    for x in (ex[0], torch.randn(1, 3, 32, 32), torch.full((1, 3, 32, 32), 40.0)):  # the last one saturates
        assert torch.equal(cm(x), ref(x))


class _OddShapes(torch.nn.Module):
    """GEMMs with M odd, N not a multiple of any tile width and K not a multiple of 8: a 3x3 conv (im2col,
    K = 45, N = 11, M = 25 pixels), a 1x1 conv (K = 11, N = 13) and a linear (K = 13 * 25 = 325, N = 7)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(5, 11, 3)
        self.point = torch.nn.Conv2d(11, 13, 1)
        self.fc = torch.nn.Linear(13 * 25, 7)

    def forward(self, x):
        y = torch.relu(self.point(torch.relu(self.conv(x))))
        return self.fc(y.flatten(1))


def test_i8mm_odd_shapes_are_bit_exact_on_the_device(arm_device, tmp_path):
    torch.manual_seed(1)
    model = _OddShapes().eval()
    ex = torch.randn(1, 5, 7, 7)
    cal = [ex, torch.randn(1, 5, 7, 7)]
    ref = qcompile.compile(model, (ex,), target="reference", calibration=cal, progress=False)
    cm = qcompile.compile(model, (ex,), target="arm-i8mm", calibration=cal, progress=False,
                          remote="%s:%d" % arm_device)
    gemms = _gemms(functions(cm.save(tmp_path / "odd") / "model.so"))
    assert len(gemms) == 3 and all("smmla" in ops for ops in gemms.values())
    for x in (ex, torch.randn(1, 5, 7, 7) * 3):
        assert torch.equal(cm(x), ref(x))


@pytest.mark.parametrize("m,n,k,tiling", [
    (1, 13, 21, None),  # one row (the row pair's second row is padding), ragged N and K
    (7, 6, 8, Tiling(2, 4)),  # ragged N in a 4-wide tile, odd M over 2-row blocks
    (33, 100, 27, Tiling(6, 12, 2)),  # several panels per job, ragged last row block
    (17, 40, 72, None),  # the cost model's tile
])
@pytest.mark.parametrize("requant", [G.Requant(35, 7), G.Requant(20, -3, -128, 127, "int8"), None],
                         ids=["uint8", "int8", "int32"])
def test_i8mm_gemm_kernel_is_bit_exact_on_the_device(arm_device, tmp_path, m, n, k, tiling, requant):
    """The kernel alone against reference_gemm, with full-range data and the extreme product in row 0."""
    from tvm import rpc

    isa = NEON_I8MM
    rng = np.random.default_rng(m * n * k)
    w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    a[0], w[0] = 255, -128
    bias = rng.integers(-5000, 5000, n).astype(np.int32)
    mult = rng.integers(1 << 20, 1 << 26, n).astype(np.int32) if requant else np.zeros(n, np.int32)
    tiling = tiling or choose_tiling(isa, m, n, k)
    func = G.gemm_prim_func(n, k, requant, isa, tiling)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(VARIANTS["arm-i8mm"]))
    path = tmp_path / "gemm.so"
    lib.export_library(str(path), fcompile=cc.cross_compiler(CROSS_COMPILER))
    assert "smmla" in functions(path)["main_compute_"]

    remote = rpc.connect(*arm_device)
    remote.upload(str(path))
    main = remote.load_module(path.name)["main"]
    dev = remote.cpu(0)
    padded = -(-n // tiling.nr) * tiling.nr
    folded = (bias + isa.a_offset * w.astype(np.int64).sum(1)).astype(np.int32)  # as gemm_lowering._offset_bias
    consts = [G.pack_weight(w, isa, tiling.nr), G.pad_channels(folded, padded), G.pad_channels(mult, padded)]
    want = G.reference_gemm(torch.from_numpy(a), torch.from_numpy(w), torch.from_numpy(bias),
                            torch.from_numpy(mult) if requant else None, requant).numpy()
    out = tvm.runtime.tensor(np.zeros((m, n), want.dtype), dev)
    main(tvm.runtime.tensor(a, dev), *(tvm.runtime.tensor(c, dev) for c in consts), out)
    assert np.array_equal(out.numpy(), want)


def test_i8mm_linear_executes_one_smmla_per_2x2x8_block_and_fewer_instructions_than_sdot(tmp_path):
    """Dynamic counts on the emulated device (arm_instructions.py): the smmla count is what the tile fixes
    (padded rows and columns included), and the whole call executes fewer instructions than with sdot."""
    from qcompile.backends.tvm.arm.instruction_counts import count_instructions

    torch.manual_seed(0)
    m, k, n = 9, 256, 60  # M odd, N not a multiple of 8
    model = torch.nn.Sequential(torch.nn.Linear(k, n)).eval()
    x = torch.randn(m, k)
    counts = {}
    for target in ("arm-i8mm", "arm"):
        cm = qcompile.compile(model, (x,), target=target, calibration=[x], progress=False)
        counts[target] = count_instructions(cm.save(tmp_path / target), [x])
    tile = choose_tiling(NEON_I8MM, m, n, k)  # what gemm_lowering.default_tiling picks
    rows, cols = -(-m // tile.mr) * tile.mr, -(-n // tile.nr) * tile.nr
    assert counts["arm-i8mm"].count("smmla") == rows // 2 * cols // 2 * k // 8
    assert counts["arm-i8mm"].count("sdot") == 0 and counts["arm"].count("smmla") == 0
    assert counts["arm-i8mm"].total < counts["arm"].total, (counts["arm-i8mm"].total, counts["arm"].total)
