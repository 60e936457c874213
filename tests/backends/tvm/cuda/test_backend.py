"""target="cuda" on a machine without a GPU (CI): models build, the kernels are compiled to a cubin at build
time, artifacts save and load without TVM's compiler, and calling says clearly that a GPU is needed.
Results on a GPU: tests/gpu (run on a lent GPU through tools/cuda_device.py)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qcompile
from qcompile.backends.tvm.cuda import nvcc_build, runtime
from qcompile.ir import meta

needs_no_gpu = pytest.mark.skipif(nvcc_build.gpu_present(), reason="checks the behaviour of a machine without a GPU")
RUNTIME_FILE = Path(runtime.__file__)


def _saved_kernels(cm, directory: Path) -> nvcc_build.KernelBuild:
    cm.save(directory)
    return nvcc_build.KernelBuild(directory / "cuda")


def test_mobilenet_v2_builds_into_a_library_that_carries_its_cubin(mobilenet, tmp_path):
    model, example, calibration, *_ = mobilenet
    cm = qcompile.compile(model, example, target="cuda", calibration=calibration, progress=False)
    kernels = _saved_kernels(cm, tmp_path)
    convs = [name for name in kernels.kernel_ptx() if "conv2d" in name]
    assert len(convs) >= 30  # one per distinct fused conv group (52 convs, equal shapes share a kernel)
    assert kernels.spills() and not any(kernels.spills().values())
    library = (tmp_path / "model.so").read_bytes()
    # The cubin (an ELF with .nv.info sections) is inside the library, the CUDA source is not: nothing is
    # compiled where the model is loaded.
    assert b".nv.info" in library and b"cubin" in library
    assert b"__global__" not in library and b"extern \"C\"" not in library


@needs_no_gpu
def test_calling_without_a_gpu_says_so_after_building_and_after_loading(resnet, tmp_path):
    model, (x,), calibration = resnet
    cm = qcompile.compile(model, (x,), target="cuda", calibration=calibration, progress=False)
    with pytest.raises(qcompile.UsageError, match="needs an NVIDIA GPU to run, and there is no NVIDIA driver"):
        cm(x)
    cm.save(tmp_path)
    with pytest.raises(qcompile.UsageError, match="save\\(\\) it and load it with qcompile.load\\(\\) on a machine with a GPU"):
        qcompile.load(tmp_path, trust_native_code=True)(x)
    with pytest.raises(qcompile.UsageError, match="needs an NVIDIA GPU"):
        cm.benchmark(x)
    assert "conv" in str(cm.report())  # the per-layer report, without kernel times


@needs_no_gpu
def test_a_saved_library_loads_with_the_tvm_runtime_alone(resnet, tmp_path):
    """What the GPU machine does: TVM_USE_RUNTIME_LIB=1 (no compiler library) and cuda_runtime.py alone."""
    model, (x,), calibration = resnet
    qcompile.compile(model, (x,), target="cuda", calibration=calibration, progress=False).save(tmp_path)
    script = f"""
import importlib.util, sys, tvm
spec = importlib.util.spec_from_file_location("cuda_runtime", {str(RUNTIME_FILE)!r})
rt = importlib.util.module_from_spec(spec); spec.loader.exec_module(rt)
assert tvm.base._RUNTIME_ONLY and "qcompile" not in sys.modules
rt.load_runtime()
lib = tvm.runtime.load_module({str(tmp_path / "model.so")!r})
print([m.kind for m in lib.imports[0].imports], rt.missing_gpu())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['cuda'] there is no NVIDIA driver on this machine"


def test_minilm_builds_with_a_free_batch(minilm, tmp_path):
    emb, batches = minilm
    batch = torch.export.Dim("batch", min=1, max=64)
    dims = {0: batch}
    cm = qcompile.compile(emb, batches[0], target="cuda", calibration=batches[1:],
                          dynamic_shapes={"ids": dims, "mask": dims}, progress=False)
    kernels = _saved_kernels(cm, tmp_path)
    assert not any(kernels.spills().values())
    # The batch stays a run-time argument of the kernels (none was specialised to the example's 2).
    ids = next(iter(cm.graph_module.graph.find_nodes(op="placeholder")))
    assert re.search(rf"int64_t {meta.input_dims(ids)[0].expr}\b", kernels.source)
    # Float attention as two products tiled through shared memory and a softmax (attention_lowering.py), not TVM's
    # one attention kernel, which only dlight's one-thread-per-score fallback took.
    ptx = kernels.kernel_ptx()
    assert not any("attention" in name for name in ptx)
    products = [name for name in ptx if "matmul" in name]
    assert len(products) == 2 and all(".shared" in ptx[name] for name in products), sorted(ptx)
    assert any("softmax" in name for name in ptx)


def test_other_architectures_by_option(resnet, tmp_path):
    model, (x,), calibration = resnet
    cm = qcompile.compile(model, (x,), target="cuda", arch="sm_80", calibration=calibration, progress=False)
    assert ".target sm_80" in _saved_kernels(cm, tmp_path).ptx


def test_bad_architecture_and_missing_nvcc_are_clear_errors(resnet, monkeypatch):
    model, (x,), calibration = resnet
    with pytest.raises(qcompile.UsageError, match="arch must name a CUDA architecture"):
        qcompile.compile(model, (x,), target="cuda", arch="hopper", calibration=calibration, progress=False)
    monkeypatch.setattr(nvcc_build.shutil, "which", lambda *a, **k: None)
    with pytest.raises(qcompile.UsageError, match="compiles its kernels with nvcc when it builds"):
        qcompile.compile(model, (x,), target="cuda", calibration=calibration, progress=False)
