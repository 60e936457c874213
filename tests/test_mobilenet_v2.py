"""The core issue's Must-show on the real MobileNetV2 (torchvision weights, packaged photos)."""
import torch

import qcompile
from qcompile.zoo.evaluate import compare, logits


def test_int8_accuracy_against_fp32(mobilenet, mobilenet_compiled):
    model, _, calibration, x, labels, originals = mobilenet
    cm, _ = mobilenet_compiled
    assert len(x) >= 100 and len(calibration) >= 20
    result = compare(logits(model, x, 20), logits(cm, x), labels, originals)
    print(result)
    assert result.agreement >= 0.95
    assert result.top1_quant >= result.top1_float - 1 / 20 - 1e-6  # at most one photo below fp32
    assert result.top1_float >= 0.85  # the fp32 model and the photos are the real ones


def test_weights_are_int8_and_3_9x_smaller(mobilenet_compiled):
    cm, _ = mobilenet_compiled
    report = cm.report()
    assert report.compression >= 3.9
    convs = [r for r in report.rows if r.op == "conv2d"]
    assert len(convs) == 52 and all(r.bits == "8" for r in convs)
    assert report.float_layers == []
    ints = [b for name, b in cm.graph_module.named_buffers() if name.endswith("_weight_int")]
    assert ints and all(b.dtype == torch.int8 for b in ints)


def test_report_links_layers_to_source(mobilenet_compiled):
    cm, _ = mobilenet_compiled
    text = str(cm.report())
    assert "features.18.0 (Conv2d)" in text and "mobilenet_v2.py:" in text
    sqnr = [r.sqnr_db for r in cm.report().rows]
    assert all(s is not None for s in sqnr)
    assert sqnr[0] > 25 and min(sqnr) > 8  # error accumulates with depth but stays bounded


def test_integer_graph_runs_integer_ops(mobilenet_compiled):
    cm, _ = mobilenet_compiled
    targets = {str(n.target) for n in cm.graph_module.graph.nodes if n.op == "call_function"}
    assert "qcompile.conv2d_int.default" in targets and "qcompile.requantize_fixed.default" in targets
    assert not any(t.startswith("aten.conv2d") or t == "qcompile.requantize.default" for t in targets)


def test_save_load_is_bit_exact(mobilenet, mobilenet_compiled, tmp_path):
    _, example, *_ = mobilenet
    cm, _ = mobilenet_compiled
    cm.save(tmp_path / "art")
    again = qcompile.load(tmp_path / "art")
    assert torch.equal(again(*example), cm(*example))
    assert again.report().weight_bytes == cm.report().weight_bytes


def test_dump_dir_has_every_pass(mobilenet_compiled):
    _, dump = mobilenet_compiled
    names = sorted(p.name for p in dump.glob("*.txt"))
    assert names == [
        "00-input.txt", "01-fold-batch-norm.txt", "02-choose-bitwidth.txt", "03-calibrate.txt",
        "04-insert-qdq.txt", "05-fuse-qdq.txt", "06-fold-scales.txt",
    ]
    assert (dump / "index.html").read_text().count("<tr>") == 8
    fused = (dump / "05-fuse-qdq.txt").read_text()
    assert "qcompile.conv2d_int" in fused and "src=features.0.0 (Conv2d)" in fused and "uint8[1, 32, 112, 112]" in fused
    assert (dump / "06-fold-scales.dot").read_text().startswith("digraph")



def test_mixed_precision_at_6_bits_keeps_agreement(mobilenet):
    """bits="mixed", budget=6 (average weight bits) on the real model."""
    model, example, calibration, x, labels, originals = mobilenet
    cm = qcompile.compile(model, example, calibration=calibration, bits="mixed", budget=6, progress=False)
    alloc = cm.report().bit_allocation
    assert alloc["avg_bits"] <= 6 and {r["bits"] for r in alloc["layers"]} >= {8, 4}
    result = compare(logits(model, x, 20), logits(cm, x), labels, originals)
    print(result)
    assert result.agreement >= 0.93
