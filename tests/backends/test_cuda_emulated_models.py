"""Every GPU case (gpu_cases.py) compiled for target="cuda" and run here: TVM's own CUDA runtime drives the
model, and each kernel of its cubin runs on the CPU emulator (cuda_emulator.py) through the stand-ins for the
driver and the CUDA runtime. What the device check compares on a GPU, checked on every commit: the integer
cases bit for bit, the float ones within their GPU bounds."""
import pytest
import torch

import qcompile
from qcompile.backends.tvm.cuda_emulator import emulated_gpu
from tests.backends.gpu_cases import gpu_cases

CASES = {case.name: case for case in gpu_cases()}


def _compiled(case, target: str, **extra):
    return qcompile.compile(case.model, case.example, target=target, calibration=case.calibration, progress=False,
                            **case.options, **extra)


def _outputs(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _assert_matches(got: tuple, expected: tuple, atol: float) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=atol)


@pytest.mark.parametrize("name", CASES)
def test_gpu_case_emulated_matches_the_reference(name):
    case = CASES[name]
    expected = _outputs(_compiled(case, "reference")(*case.example))
    gpu = _compiled(case, "cuda", **case.gpu_options)
    with emulated_gpu():
        got = _outputs(gpu(*case.example))
    _assert_matches(got, expected, case.atol)


def test_a_saved_cuda_model_loads_and_runs_emulated(tmp_path):
    """The artifact keeps its kernels' source beside the cubin (cuda/), which is what the emulator compiles."""
    case = CASES["conv_stack_free_batch"]
    expected = _outputs(_compiled(case, "reference")(*case.example))
    loaded = qcompile.load(_compiled(case, "cuda").save(tmp_path / "model"))
    with emulated_gpu(copies="lazy", order="descending"):
        got = _outputs(loaded(*case.example))
    _assert_matches(got, expected, case.atol)


def test_outside_the_emulator_a_cuda_model_still_says_it_needs_a_gpu():
    gpu = _compiled(CASES["odd_linear"], "cuda")
    with emulated_gpu():
        gpu(*CASES["odd_linear"].example)
    with pytest.raises(qcompile.UsageError, match="needs an NVIDIA GPU"):
        gpu(*CASES["odd_linear"].example)
