"""The CUDA lowering's Relax module (its TE definitions: batched matmuls, convs with [cout, kh, kw, cin]
weights, zero-point terms, float attention) built for this CPU: its arithmetic checked against the
reference without a GPU."""
import torch
import tvm
from torch import fx

import qcompile
from qcompile.backends.tvm.cpu.isa import host_target
from qcompile.backends.tvm.cpu.pipeline import optimize
from qcompile.backends.tvm.cuda import nvcc_build
from qcompile.backends.tvm.cuda import pipeline as cuda_pipeline
from qcompile.backends.tvm.x86.backend import TVMRunner


def cuda_lowering(gm: fx.GraphModule) -> tvm.IRModule:
    return cuda_pipeline.lower(gm, nvcc_build.target(nvcc_build.DEFAULT_ARCH))


def built_for_cpu(mod: tvm.IRModule) -> TVMRunner:
    target = host_target()
    return TVMRunner(tvm.compile(optimize(mod, target), target=target), [])


def assert_matches_reference(model, example: tuple, calibration, options: dict, atol: float = 0.0) -> None:
    """The model compiled for the reference; its integer graph's CUDA lowering, built for this CPU, gives
    the reference's outputs on `example` (bit for bit unless `atol`)."""
    reference = qcompile.compile(model, example, target="reference", calibration=calibration, progress=False, **options)
    expected = reference(*example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = built_for_cpu(cuda_lowering(reference.graph_module))(*example)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=atol)
