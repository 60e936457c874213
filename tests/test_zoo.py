"""Architectures nobody here wrote (qcompile/zoo/architectures.py) compile with their default configs, keep
>= 95% of their weights integer and stay close to float; x86 agrees with the reference bit for bit where the model has no
float islands, within a bound where it has. CI runs the reference on every model and x86 on a small twin
set; `pytest -m zoo` runs x86 on all of them."""
import pytest
import torch

import qcompile
from qcompile.zoo.architectures import output_tensor, prepare, zoo

ZOO = zoo()
# A transformer and an upsampler (an LSTM runs on x86 in test_capture.py, ResNet-style CNNs in
# tests/backends/tvm/x86/test_backend.py).
X86_IN_CI = ["gpt2", "conv_transpose2d"]
# The slowest member to compile (8 s) runs with the others under -m zoo only.
REFERENCE_ONLY_UNDER_ZOO = {"mobilevit"}
# x86 against the reference where float islands remain: TVM's float kernels round differently, and a
# difference that crosses a rounding boundary of a later quantize moves one code (relative to the output's range).
FLOAT_ISLAND_BOUND = 0.05
# Measured, not yet met (the test fails when it is, so the entry gets removed).
KNOWN_GAPS: dict[str, str] = {}


@pytest.fixture(scope="module")
def compiled():
    """name -> (entry, model, evaluation inputs, reference CompiledModel), compiled once per module."""
    cache = {}

    def get(name):
        if name not in cache:
            p = prepare(name, evaluation=32 if ZOO[name].kind == "vision" else 4)
            cm = qcompile.compile(p.model, p.example, calibration=p.calibration, progress=False)
            cache[name] = (p.entry, p.model, p.example, p.calibration, p.evaluation, cm)
        return cache[name]

    return get


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.zoo) if n in REFERENCE_ONLY_UNDER_ZOO else n
                                  for n in ZOO])
def test_zoo_model_compiles_mostly_integer_and_close_to_float(compiled, name):
    entry, model, _, _, evaluation, cm = compiled(name)
    cov = cm.report().extra["coverage"]
    assert 1 - cov["float_weights"] / cov["weights"] >= 0.95, cm.report().coverage_line()
    with torch.no_grad():
        pairs = [(output_tensor(cm(*x)), output_tensor(model(*x))) for x in evaluation]
    if entry.kind == "vision":
        agreement = sum(int(q.argmax() == f.argmax()) for q, f in pairs) / len(pairs)
        if name in KNOWN_GAPS:
            assert agreement < 0.9, f"{name} now agrees {agreement:.3f}: remove it from KNOWN_GAPS"
            pytest.xfail(KNOWN_GAPS[name])
        assert agreement >= 0.9, f"top-1 agreement {agreement:.3f}"
    else:
        assert min(_cosine(q, f) for q, f in pairs) >= 0.99


def _x86_agrees(compiled, name):
    entry, model, example, calibration, evaluation, cm = compiled(name)
    x86 = qcompile.compile(model, example, calibration=calibration, progress=False, target="x86")
    islands = cm.report().float_layers
    for x in evaluation[:4]:
        got, want = output_tensor(x86(*x)), output_tensor(cm(*x))
        if islands:
            assert (got - want).abs().max() <= FLOAT_ISLAND_BOUND * want.abs().max()
        else:
            assert torch.equal(got, want)


@pytest.mark.parametrize("name", X86_IN_CI)
def test_zoo_model_on_x86_agrees_with_the_reference(compiled, name):
    _x86_agrees(compiled, name)


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in ZOO if n not in X86_IN_CI])
def test_every_zoo_model_on_x86_agrees_with_the_reference(compiled, name):
    _x86_agrees(compiled, name)
