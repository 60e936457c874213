"""Whole models through the default pipeline: op coverage and agreement with float."""
import pytest
import torch

import qcompile
from tests.models import ConvBnRelu, OpZoo, TinyResNet


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1)).min().item()


def test_resnet_style_model_is_fully_integer():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 64, 64)
    cal = [torch.randn(2, 3, 64, 64) for _ in range(8)]
    cm = qcompile.compile(model, (x,), calibration=cal, progress=False, verify_each=True)
    stats = cm.report().extra["stats"]["fuse-qdq"]
    assert stats["conv2d"] == 6 and stats["max_pool2d"] == 1 and stats["add"] == 2
    assert stats["adaptive_avg_pool2d"] == 1 and stats["linear (float output)"] == 1
    assert cm.report().float_layers == []
    assert cosine(cm(x), model(x)) > 0.99


def test_op_zoo_quantizes_what_it_can_and_explains_the_rest():
    torch.manual_seed(0)
    model = OpZoo().eval()
    ex = (torch.randn(2, 3, 8, 8), torch.randint(0, 20, (2, 5)))
    cal = [(torch.randn(2, 3, 8, 8), torch.randint(0, 20, (2, 5))) for _ in range(8)]
    cm = qcompile.compile(model, ex, calibration=cal, progress=False, verify_each=True)
    stats = cm.report().extra["stats"]["fuse-qdq"]
    for kind in ("conv2d", "lut", "cat", "avg_pool2d", "mul", "mean", "matmul"):
        assert stats.get(kind, 0) + stats.get(f"{kind} (float output)", 0) >= 1, (kind, stats)
    floats = {r.op: r.note for r in cm.report().float_layers}
    assert "layer_norm" in floats and "no integer kernel" in floats["layer_norm"]
    assert "softmax" in floats
    with torch.no_grad():
        assert cosine(cm(*ex), model(*ex)) > 0.98


def test_dynamic_quantities_stay_exact_for_constant_input():
    """The integer graph is deterministic: the same input gives bit-identical output."""
    model = ConvBnRelu().eval()
    x = torch.randn(1, 3, 8, 8)
    cm = qcompile.compile(model, (x,), calibration=[x], progress=False)
    assert torch.equal(cm(x), cm(x.clone()))


def test_minilm_sentence_embeddings_agree_with_fp32(minilm):
    emb, batches = minilm
    cm = qcompile.compile(emb, batches[0], calibration=batches[1:], progress=False)
    stats = cm.report().extra["stats"]["fuse-qdq"]
    assert stats["linear"] + stats["linear (float output)"] == 36  # every Linear runs on int8
    with torch.no_grad():
        sims = [cosine(cm(*bt), emb(*bt)) for bt in batches]
    assert min(sims) > 0.97, sims


@pytest.mark.parametrize(
    "config, act_dtype",
    [
        (qcompile.QuantConfig(symmetric_activations=True), torch.int8),
        (qcompile.QuantConfig(per_channel=False), torch.uint8),
        (qcompile.QuantConfig(method="mse"), torch.uint8),
        (qcompile.QuantConfig(method="percentile", percentile=99.9), torch.uint8),
        (qcompile.QuantConfig(method="entropy"), torch.uint8),
    ],
)
def test_schemes_and_observers_end_to_end(config, act_dtype):
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(2, 3, 64, 64)
    cm = qcompile.compile(model, (x,), calibration=[torch.randn(2, 3, 64, 64) for _ in range(4)], config=config, progress=False)
    acts = {n.meta["val"].dtype for n in cm.graph_module.graph.nodes if str(n.target) == "qcompile.requantize_fixed.default"}
    assert acts == {act_dtype}
    weights = [b for name, b in cm.graph_module.named_buffers() if name.endswith("_multiplier")]
    assert any(w.numel() > 1 for w in weights) == config.per_channel
    assert cosine(cm(x), model(x)) > 0.97


def test_dynamic_batch_dimension_stays_free_and_exact():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    x = torch.randn(4, 3, 32, 32)
    batch = torch.export.Dim("batch", min=1, max=64)
    cm = qcompile.compile(model, (x,), calibration=[x], dynamic_shapes={"x": {0: batch}}, progress=False)
    whole = cm(x)
    singles = torch.cat([cm(x[i:i + 1]) for i in range(4)])
    assert torch.equal(whole, singles)  # integer arithmetic: no batch-size-dependent rounding
    with pytest.raises(ValueError, match=r"expected float32\[\*, 3, 32, 32\], got float32\[2, 3, 16, 16\]"):
        cm(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"dimension 0 is 65, outside the range \[1, 64\] declared in dynamic_shapes"):
        cm(torch.randn(65, 3, 32, 32))  # what torch.export's own guards would refuse
