"""target="cuda" on a GPU: every case of the bundle (tools/cuda_bundle.py, built where TVM's compiler is)
gives the reference backend's outputs, bit for bit. Run on the GPU machine:

    python3 -m pytest -m gpu tests/gpu            # bundle in .gpu/, or QCOMPILE_GPU_BUNDLE=path
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cuda_device  # noqa: E402

pytestmark = pytest.mark.gpu
BUNDLE = Path(os.environ.get("QCOMPILE_GPU_BUNDLE", cuda_device.DEFAULT_BUNDLE))


@pytest.fixture(scope="module")
def rt():
    if not (BUNDLE / "site").is_dir():
        pytest.fail(f"no GPU bundle at {BUNDLE}: build it with tools/cuda_bundle.py where TVM's compiler is")
    module = cuda_device.runtime(BUNDLE)
    why = module.missing_gpu()
    if why:
        pytest.fail(f"the gpu tests need a GPU, and {why}")
    return module


@pytest.mark.parametrize("case", cuda_device.cases(BUNDLE), ids=lambda c: c.name)
def test_the_gpu_gives_the_reference_outputs(rt, case):
    assert cuda_device.mismatch(case, case.model(rt)) is None


def test_the_bundle_has_cases(rt):
    assert cuda_device.cases(BUNDLE), f"{BUNDLE}/cases is empty"
