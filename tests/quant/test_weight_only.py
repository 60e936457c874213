"""Weight-only and dynamic Linear quantization: exact op semantics, group-wise qparams, config checks,
and compiled models on the reference backend."""
import pytest
import torch
from torch import nn

import qcompile
from qcompile.errors import UsageError
from qcompile.ir.qspec import QSpec
from qcompile.passes.manager import run_pipeline
from qcompile.quant.math import dequantize_groups, dynamic_qparams, quantize_groups
from qcompile.quant.observers import weight_qparams
from qcompile.serialize import graph_from_json, graph_to_json

qc = torch.ops.qcompile


def test_linear_weight_only_matches_hand_computed_values():
    x = torch.tensor([[0.0, 1.0, 2.0, -1.0]])
    w = torch.tensor([[1, 2, 3, 4], [-1, 0, 1, 2]], dtype=torch.int8)
    grouped = torch.tensor([[0.5, 1.0], [2.0, 1.0]])  # group size 2: w row 0 -> [0.5, 1, 3, 4]
    assert torch.equal(qc.linear_weight_only(x, w, grouped, None, 2), torch.tensor([[3.0, 0.0]]))
    per_row = torch.tensor([[0.5], [0.25]])  # group size K: one scale per row
    bias = torch.tensor([1.0, -1.0])
    # row 0: 0.5 * (0 + 2 + 6 - 4) + 1 = 3; row 1: 0.25 * (0 + 0 + 2 - 2) - 1 = -1
    assert torch.equal(qc.linear_weight_only(x, w, per_row, bias, 4), torch.tensor([[3.0, -1.0]]))


def test_linear_dynamic_matches_hand_computed_values():
    # min -1, max 2.984375: scale (2.984375 + 1) / 255 = 1/64, zero point round(1 * 64) = 64
    x = torch.tensor([[0.0, 1.0, 2.984375, -1.0]])
    qp = dynamic_qparams(x)
    assert float(qp.scale) == 1 / 64 and int(qp.zero_point) == 64
    w = torch.tensor([[1, 2, 3, 4], [-1, 0, 1, 2]], dtype=torch.int8)
    # codes [64, 128, 255, 0] -> (code - 64) = [0, 64, 191, -64]; acc = [445, 63]
    y = qc.linear_dynamic(x, w, torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0]))
    assert torch.equal(y, torch.tensor([[445 / 64 * 0.5, 63 / 64 + 1.0]]))


def test_dynamic_range_always_contains_zero():
    qp = dynamic_qparams(torch.tensor([1.0, 2.55]))  # all positive: the range is [0, 2.55]
    assert int(qp.zero_point) == 0 and float(qp.scale) == pytest.approx(0.01)
    qp = dynamic_qparams(torch.tensor([-2.55, -1.0]))  # all negative: zero is the top code
    assert int(qp.zero_point) == 255
    zeros = qc.linear_dynamic(torch.zeros(2, 3), torch.ones(4, 3, dtype=torch.int8), torch.ones(4), torch.arange(4.0))
    assert torch.equal(zeros, torch.arange(4.0).expand(2, 4))


def test_group_wise_qparams_have_one_scale_per_group():
    w = torch.tensor([[1.0, -1.75, 0.625, 0.25, 7.0, 0.0, 0.0, -3.5]])
    qp = weight_qparams(w, QSpec(dtype="int4", symmetric=True, axis=0, narrow=True, group_size=4))
    assert qp.scale.shape == (1, 2) and torch.equal(qp.zero_point, torch.zeros(1, 2, dtype=torch.int32))
    assert torch.equal(qp.scale, torch.tensor([[0.25, 1.0]]))  # amax / 7 of each group
    q = quantize_groups(w, qp.scale, qp.zero_point, 4, -7, 7, torch.int8)
    assert q.tolist() == [[4, -7, 2, 1, 7, 0, 0, -4]]  # 2.5 -> 2, -3.5 -> -4: half to even
    assert dequantize_groups(q, qp.scale, qp.zero_point, 4).tolist() == [[1.0, -1.75, 0.5, 0.25, 7.0, 0.0, 0.0, -4.0]]


def test_config_presets_and_per_layer_bits():
    assert qcompile.QuantConfig.from_bits("w4") == qcompile.QuantConfig(bits=4, activations="float", group_size=128)
    assert qcompile.QuantConfig.from_bits("w8") == qcompile.QuantConfig(bits=8, activations="float")
    cfg = qcompile.QuantConfig.from_bits("w4")
    assert cfg.weight_spec(0) == QSpec(dtype="int4", symmetric=True, axis=0, narrow=True, group_size=128)
    assert cfg.weight_spec(0, bits=8).dtype == "int8" and cfg.weight_spec(0, bits=8).group_size == 128
    assert qcompile.QuantConfig().weight_spec(0) == QSpec(dtype="int8", symmetric=True, axis=0, narrow=True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(activations="half"), "activations must be one of"),
    (dict(activations="float", group_size=0), "group_size must be a positive int"),
    (dict(group_size=32), "group_size needs activations='float'"),
    (dict(activations="float", group_size=32, per_channel=False), "per_channel=True"),
])
def test_bad_weight_only_configs_are_rejected(kwargs, message):
    with pytest.raises(UsageError, match=message):
        qcompile.QuantConfig(**kwargs)
    with pytest.raises(UsageError, match="weight bits must be 8 or 4"):
        qcompile.QuantConfig().weight_spec(0, bits=2)


class MLP(nn.Module):
    def __init__(self, k=64, hidden=96, out=32):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(k, hidden), nn.Linear(hidden, out, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) * 2.0


def _ops(cm) -> list[str]:
    return [n.target.__name__ for n in cm.graph_module.graph.nodes if n.op == "call_function"]


def test_group_size_must_divide_every_linear_input():
    with pytest.raises(UsageError, match=r"group_size 48 does not divide the input size 64 of layer linear \(fc1 \(Linear\)"):
        qcompile.compile(MLP().eval(), (torch.randn(2, 64),), config=qcompile.QuantConfig(bits=4, activations="float", group_size=48), progress=False)


def _dequantized_copy(model: MLP, config: qcompile.QuantConfig) -> MLP:
    """The float model with every Linear weight replaced by its quantize -> dequantize."""
    ref = MLP().eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for lin in (ref.fc1, ref.fc2):
            spec = config.weight_spec(0)
            qp = weight_qparams(lin.weight, spec)
            g = spec.group_size or lin.weight.shape[1]
            scale = qp.scale.reshape(lin.weight.shape[0], -1)
            q = quantize_groups(lin.weight, scale, qp.zero_point.reshape(scale.shape), g, spec.qmin, spec.qmax, torch.int8)
            lin.weight.copy_(dequantize_groups(q, scale, torch.zeros_like(scale, dtype=torch.int32), g))
    return ref


@pytest.mark.parametrize("config", [
    qcompile.QuantConfig(bits=4, activations="float", group_size=32),
    qcompile.QuantConfig.from_bits("w8"),
])
def test_weight_only_mlp_needs_no_calibration_and_computes_with_dequantized_weights(config, tmp_path):
    torch.manual_seed(0)
    model, x = MLP().eval(), torch.randn(5, 64)
    cm = qcompile.compile(model, (x,), config=config, progress=False, verify_each=True)
    assert _ops(cm).count("linear_weight_only.default") == 2
    assert not any("quantize" in op for op in _ops(cm))  # relu and the scaling stay float
    probe = torch.randn(5, 64)
    torch.testing.assert_close(cm(probe), _dequantized_copy(model, config)(probe), rtol=1e-6, atol=1e-6)
    rows = cm.report().rows
    assert [r.bits for r in rows] == [str(config.bits)] * 2
    scales = 4 * 96 * 2 if config.group_size else 0  # fc1's fp32 group scales: 96 rows x 2 groups
    assert rows[0].weight_bytes == 96 * 64 * config.bits // 8 + scales
    loaded = qcompile.load(cm.save(tmp_path / "wo"))
    assert torch.equal(loaded(probe), cm(probe))


def test_group_wise_weight_qparams_survive_serialization():
    model, x = MLP().eval(), torch.randn(2, 64)
    cm_config = qcompile.QuantConfig(bits=4, activations="float", group_size=32)
    session = qcompile.api.Session.start(model, (x,), None, cm_config)
    gm = run_pipeline(session.captured.gm, qcompile.passes.as_passes("calibrate"), session.ctx, qcompile.passes.instruments.Instruments())
    loaded = graph_from_json(*graph_to_json(gm))
    weights = {n.name: n.meta["qc_qparams"] for n in gm.graph.nodes if "qc_qparams" in n.meta}
    again = {n.name: n.meta["qc_qparams"] for n in loaded.graph.nodes if "qc_qparams" in n.meta}
    assert len(weights) == 2 and weights.keys() == again.keys()
    for name, qp in weights.items():
        assert again[name].spec == qp.spec and qp.spec.group_size == 32 and again[name].same_as(qp)


def test_dynamic_mlp_quantizes_linear_inputs_at_run_time():
    torch.manual_seed(1)
    model, x = MLP().eval(), torch.randn(5, 64)
    config = qcompile.QuantConfig(activations="dynamic")
    cm = qcompile.compile(model, (x,), config=config, progress=False, verify_each=True)
    assert _ops(cm).count("linear_dynamic.default") == 2
    fake = qcompile.compile(model, (x,), config=config, pipeline="calibrate,insert-qdq", progress=False)
    assert _ops(fake).count("fake_quantize_dynamic.default") == 2
    for scale in (0.01, 1.0, 100.0):  # the input's own range sets its scale, whatever it is
        probe = torch.randn(5, 64) * scale
        want = model(probe)
        got = cm(probe)
        torch.testing.assert_close(got, fake(probe), rtol=1e-4, atol=1e-4 * float(want.abs().max()))
        assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999


def test_minilm_weight_only_and_dynamic_on_reference(minilm):
    emb, batches = minilm
    with torch.no_grad():
        want = [emb(*bt) for bt in batches]
    for config, op, floor in ((qcompile.QuantConfig.from_bits("w4"), "linear_weight_only.default", 0.9),
                              (qcompile.QuantConfig(activations="dynamic"), "linear_dynamic.default", 0.98)):
        cm = qcompile.compile(emb, batches[0], config=config, progress=False)
        assert _ops(cm).count(op) == 36  # every Linear of the six layers
        sims = [float(torch.nn.functional.cosine_similarity(cm(*bt), w).min()) for bt, w in zip(batches, want)]
        assert min(sims) > floor, (config, sims)


def _correlated_inputs(n: int, k: int, seed: int) -> torch.Tensor:
    """Inputs with a few strong, correlated channels, as transformer activations have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(99)) * torch.linspace(0.1, 3.0, k)
    return torch.randn(n, k, generator=g) @ mix


def test_gptq_weights_are_exact_codes_and_beat_rounding():
    from qcompile.quant.gptq import gptq

    torch.manual_seed(0)
    w, x = torch.randn(24, 64), _correlated_inputs(512, 64, 0)
    spec = QSpec(dtype="int4", symmetric=True, axis=0, narrow=True, observer="gptq", group_size=16)
    rounded, qp = gptq(w, x.double().T @ x.double(), spec)
    assert qp.scale.shape == (24, 4)
    codes = quantize_groups(rounded, qp.scale, qp.zero_point, 16, spec.qmin, spec.qmax, torch.int8)
    assert torch.equal(dequantize_groups(codes, qp.scale, qp.zero_point, 16), rounded)  # exactly codes x scales
    rtn = weight_qparams(w, QSpec(dtype="int4", symmetric=True, axis=0, narrow=True, group_size=16))
    nearest = dequantize_groups(quantize_groups(w, rtn.scale, rtn.zero_point, 16, -7, 7, torch.int8), rtn.scale, rtn.zero_point, 16)
    held_out = _correlated_inputs(512, 64, 1)
    err = lambda v: float(((held_out @ (v - w).T) ** 2).mean())  # noqa: E731
    assert err(rounded) < 0.7 * err(nearest)


def test_gptq_compile_uses_calibration_and_needs_it():
    torch.manual_seed(0)
    model = MLP().eval()
    config = qcompile.QuantConfig(bits=4, activations="float", group_size=32, weight_method="gptq")
    cal = [_correlated_inputs(128, 64, s) for s in range(4)]
    with pytest.raises(UsageError, match="weight_method='gptq' measures the Linear inputs but no calibration data"):
        qcompile.compile(model, (cal[0],), config=config, progress=False)
    cm = qcompile.compile(model, (cal[0],), config=config, calibration=cal, progress=False, verify_each=True)
    assert cm.report().extra["stats"]["calibrate"]["GPTQ-rounded weights"] == 2
    rtn = qcompile.compile(model, (cal[0],), config=qcompile.QuantConfig(bits=4, activations="float", group_size=32), progress=False)
    probe = _correlated_inputs(128, 64, 7)
    err = lambda cm: float(((cm(probe) - model(probe)) ** 2).mean())  # noqa: E731
    assert err(cm) < err(rtn)


def test_qat_refuses_weight_only_and_dynamic_configs():
    from qcompile.qat import prepare_qat

    x = torch.randn(2, 64)
    with pytest.raises(UsageError, match="quantization-aware training needs activations='static'"):
        prepare_qat(MLP().eval(), (x,), [x], config=qcompile.QuantConfig.from_bits("w4"))
