"""GPU cases (cases.py) compiled for target="cuda" and run here: TVM's own CUDA runtime drives the model,
and each kernel of its cubin runs on the CPU emulator (cuda_emulator.py) through the stand-ins for the driver
and the CUDA runtime; the integer cases bit for bit, the float ones within their GPU bounds. CI runs one case
per kernel family (about 35 s); `python tools/cuda_emulate_cases.py` runs all of them (about 80 s)."""
import threading

import pytest
import torch

import qcompile
from qcompile.backends.tvm.cuda.emulator.kernels import emulated_gpu
from tests.backends.tvm.cuda.cases import (
    compiled,
    emulated_difference,
    gpu_cases,
    outputs,
)

CASES = {case.name: case for case in gpu_cases()}
# One case per kernel family (the two tests below cover odd-sized int8 GEMMs, implicit-GEMM convs with a
# free batch; test_cuda_emulated_kernels.py the tensor-core GEMV at 16 rows of int8).
FAMILIES = {
    "depthwise": "depthwise convs",
    "attention": "int8 attention matmuls on tensor cores",
    "feedforward_free_batch": "float LayerNorm tail",
    "sdpa_bool_mask": "float sdpa, a boolean mask (a bug the emulator found)",
    "sdpa_causal_grouped_query": "float sdpa, causal, grouped-query heads",
    "linear_1152x640_w4_m5_nobias_cc": "weight-only GEMV on CUDA cores",
    "mlp_512x1024_w4_dynamic_batch": "weight-only GEMV on tensor cores (the default), a free batch",
    "mlp_512x1024_w4_m64": "weight-only prefill on wmma",
}


@pytest.mark.parametrize("name", FAMILIES)
def test_gpu_case_emulated_matches_the_reference(name):
    case = CASES[name]
    assert emulated_difference(case) <= case.atol


def test_a_saved_cuda_model_loads_and_runs_emulated(tmp_path):
    """The artifact keeps its kernels' source beside the cubin (cuda/), which is what the emulator compiles;
    under the schedule that delays copies and lets the last warp run ahead."""
    case = CASES["conv_stack_free_batch"]
    expected = outputs(compiled(case, "reference")(*case.example))
    loaded = qcompile.load(compiled(case, "cuda").save(tmp_path / "model"), trust_native_code=True)
    with emulated_gpu(copies="lazy", order="descending"):
        got = outputs(loaded(*case.example))
    assert len(got) == len(expected) and all(g.equal(e) for g, e in zip(got, expected))


def test_outside_the_emulator_a_cuda_model_still_says_it_needs_a_gpu():
    """Odd M, N and K on the int8 tensor-core GEMM: exact emulated, then, the emulator off, the clear error."""
    case = CASES["odd_linear"]
    gpu = compiled(case, "cuda")
    with emulated_gpu():
        got = outputs(gpu(*case.example))
    expected = outputs(compiled(case, "reference")(*case.example))
    assert len(got) == len(expected) and all(g.equal(e) for g, e in zip(got, expected))
    with pytest.raises(qcompile.UsageError, match="needs an NVIDIA GPU"):
        gpu(*case.example)


def test_threads_calling_one_cuda_model_each_get_the_reference_results():
    """Calls from several threads take turns on the model's one VM (its frames are not safe to share)."""
    case = CASES["odd_linear"]
    gpu = compiled(case, "cuda")
    expected = outputs(compiled(case, "reference")(*case.example))
    failures: list = []

    def calls() -> None:
        try:
            for _ in range(5):
                got = outputs(gpu(*case.example))
                if not all(g.equal(e) for g, e in zip(got, expected)):
                    failures.append("wrong result")
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            failures.append(repr(exc))

    with emulated_gpu():
        threads = [threading.Thread(target=calls) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


class PositionsFromMask(torch.nn.Module):
    """transformers' position ids: a cumsum over the attention mask (a scan, which the GPU dispatches)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x, mask):
        positions = (mask.cumsum(-1) * mask).to(torch.float32)
        return self.fc(x) + positions.unsqueeze(-1)


def test_a_scan_in_the_graph_runs_on_the_gpu_bit_exact():
    torch.manual_seed(0)
    model = PositionsFromMask().eval()
    example = (torch.randn(1, 6, 8), torch.tensor([[0, 1, 1, 1, 0, 1]]))
    reference = qcompile.compile(model, example, calibration=[example], progress=False)
    gpu = qcompile.compile(model, example, calibration=[example], progress=False, target="cuda")
    with emulated_gpu():
        got = outputs(gpu(*example))
    assert len(got) == 1 and got[0].equal(reference(*example))
