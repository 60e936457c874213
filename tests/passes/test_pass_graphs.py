"""Every registered quantization pass on small models: graph text before/after, and the graph still runs.

For each pass the pipeline is run up to and including it (one `run_pipeline` call on a fresh capture), and
compared with the pipeline up to the pass before it. Assertions are on the essential lines of
`graph_text` (substrings and regexes, not full goldens) plus the node structure where the text alone
would be ambiguous; every stage must still execute and stay close to the float model.
"""
from __future__ import annotations

import copy
import re
from collections import Counter
from functools import lru_cache

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import qcompile
from qcompile.frontend.capture import capture
from qcompile.ir import meta, shapes
from qcompile.ir.printer import graph_text
from qcompile.ir.rewrite import constant
from qcompile.passes import PassContext, as_passes, registered_passes
from qcompile.passes.instruments import Instruments
from qcompile.passes.manager import DEFAULT_PIPELINE, PassError, run_pipeline

aten = torch.ops.aten
qc = torch.ops.qcompile

PIPELINE = ["fold-batch-norm", "choose-bitwidth{progress=false}", "calibrate{progress=false}", "insert-qdq", "fuse-qdq", "fold-scales"]
PASS_NAMES = [p.split("{")[0] for p in PIPELINE]


# ------------------------------------------------------------------------------------------ models
def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics so that folding batch norm really changes the weights."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.running_var[0] = 0.01  # small enough that forgetting eps would show
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.4)
    return model


class ConvBnRelu(nn.Module):
    """conv + bn + relu, then a strided grouped conv without bias + bn."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn2(self.dw(torch.relu(self.bn(self.conv(x)))))


class LinearNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class AddNet(nn.Module):
    """Two conv branches joined by an add (a residual-style block), read by a 1x1 conv head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 6, 1)

    def forward(self, x):
        return self.head(torch.relu(self.a(x)) + self.b(x))


class AddFloatOut(nn.Module):
    """An add that feeds the graph output: nothing reads it quantized, so it stays float."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return torch.relu(self.a(x)) + self.b(x)


class Everything(nn.Module):
    """conv-bn-relu, a residual add, flatten and a linear head: the whole default pipeline on one model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = y + self.conv2(y)
        return self.fc(y.flatten(1))


MODELS = {
    "conv_bn_relu": (ConvBnRelu, (2, 3, 8, 8)),
    "linear": (LinearNet, (4, 16)),
    "add": (AddNet, (2, 4, 6, 6)),
    "add_float_out": (AddFloatOut, (2, 4, 6, 6)),
    "everything": (Everything, (2, 3, 8, 8)),
}


@lru_cache(maxsize=None)
def _model(name: str):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = _randomise_bn(cls()).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=g)
    calibration = [torch.randn(shape, generator=g) for _ in range(4)] + [x]
    return model, x, calibration


def _context(name: str) -> PassContext:
    _, x, calibration = _model(name)
    return PassContext((x,), calibration=calibration)


def _captured(name: str) -> fx.GraphModule:
    model, x, _ = _model(name)
    gm = capture(model, (x,)).gm
    shapes.propagate(gm, (x,))
    return gm


@lru_cache(maxsize=None)
def _stage_cached(name: str, n_passes: int) -> tuple[fx.GraphModule, dict]:
    """Fresh capture, then the pipeline's first `n_passes` passes in one run_pipeline call."""
    gm = _captured(name)
    ctx = _context(name)
    if n_passes:
        gm = run_pipeline(gm, as_passes(",".join(PIPELINE[:n_passes])), ctx, Instruments(verify_each=True))
    return gm, {k: dict(v) for k, v in ctx.stats.items()}


def stage(name: str, upto: str | None) -> fx.GraphModule:
    """The graph after the pipeline up to and including pass `upto` (None: the captured graph)."""
    n = 0 if upto is None else PASS_NAMES.index(upto) + 1
    return copy.deepcopy(_stage_cached(name, n)[0])


def stats(name: str, upto: str) -> dict:
    return _stage_cached(name, PASS_NAMES.index(upto) + 1)[1]


def before_after(name: str, pass_name: str) -> tuple[fx.GraphModule, str, fx.GraphModule, str]:
    i = PASS_NAMES.index(pass_name)
    before = stage(name, PASS_NAMES[i - 1] if i else None)
    after = stage(name, pass_name)
    return before, graph_text(before), after, graph_text(after)


# ------------------------------------------------------------------------------------------ helpers
def run(gm: fx.GraphModule, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = gm(x)
    assert isinstance(out, (tuple, list)) and len(out) == 1
    return out[0]


def float_out(name: str) -> torch.Tensor:
    model, x, _ = _model(name)
    with torch.no_grad():
        return model(x)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0))


def calls(gm: fx.GraphModule, target) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == target]


def op_counts(text: str) -> Counter:
    """How often each op appears as the callee of a node line, e.g. {'aten.conv2d': 2}."""
    return Counter(re.findall(r"^%\w+ = ([\w.]+)\(", text, flags=re.M))


def strip_notes(text: str) -> str:
    return "\n".join(line.split("  # ")[0].rstrip() for line in text.splitlines())


def output_node(gm: fx.GraphModule) -> fx.Node:
    (ret,) = gm.graph.output_node().args[0]
    return ret


def integer_values(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every intermediate integer tensor computed by a call_function node, by node name."""
    values: dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and isinstance(out, torch.Tensor) and not out.is_floating_point():
                values[n.name] = out.clone()
            return out

    with torch.no_grad():
        Recorder(gm).run(x)
    return values


# ------------------------------------------------------------------------------------------ registry
def test_every_pass_of_the_default_pipeline_is_registered_and_covered():
    registered = registered_passes()
    assert DEFAULT_PIPELINE.split(",") == PASS_NAMES
    for name in PASS_NAMES:
        assert name in registered
        assert registered[name].name == name
    assert [p.name for p in as_passes(",".join(PIPELINE))] == PASS_NAMES


# ------------------------------------------------------------------------------------------ fold-batch-norm
def test_fold_batch_norm_graph_text():
    before, tb, after, ta = before_after("conv_bn_relu", "fold-batch-norm")
    assert op_counts(tb)["aten.batch_norm"] == 2
    assert "aten.batch_norm" not in ta
    assert op_counts(ta)["aten.conv2d"] == 2
    assert op_counts(ta)["aten.relu"] == 1
    # The folded convs read folded weights and a bias, even the one that had none (dw, bias=False).
    assert re.search(r"aten\.conv2d\(%relu, %dw_weight, None, \[2, 2\], \[1, 1\], \[1, 1\], 4\)", tb), tb
    convs = re.findall(r"^%\w+ = aten\.conv2d\((.*)\) : (\S+)", ta, flags=re.M)
    assert len(convs) == 2
    for args, _ in convs:
        _, w, b = [a.strip() for a in args.split(",")[:3]]
        assert w.endswith("_folded") and b.endswith("_folded_bias"), args
    assert re.search(r"aten\.conv2d\(%relu, %dw_weight_folded, %dw_weight_folded_bias, \[2, 2\], \[1, 1\], \[1, 1\], 4\)"
                     r" : float32\[2, 8, 4, 4\]", ta), ta
    assert re.search(r"= aten\.conv2d\(%x, %conv_weight_folded, %conv_weight_folded_bias, \[1, 1\], \[1, 1\]\)"
                     r" : float32\[2, 8, 8, 8\]", ta), ta
    for conv in calls(after, aten.conv2d.default):
        assert conv.args[2] is not None and conv.args[2].op == "get_attr"
        assert constant(after, conv.args[2]).shape == (8,)
    # The original (unfolded) parameters are gone from the module.
    assert not any("running_mean" in n for n, _ in after.named_buffers())
    # Provenance: the folded conv still points at the user's module.
    assert "src=conv (Conv2d)" in ta and "src=dw (Conv2d)" in ta
    assert stats("conv_bn_relu", "fold-batch-norm")["fold-batch-norm"]["folded"] == 2


def test_fold_batch_norm_preserves_the_float_function():
    _, x, _ = _model("conv_bn_relu")
    before, _, after, _ = before_after("conv_bn_relu", "fold-batch-norm")
    ref = float_out("conv_bn_relu")
    torch.testing.assert_close(run(before, x), ref)
    torch.testing.assert_close(run(after, x), ref, atol=1e-5, rtol=1e-5)
    x2 = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    model, _, _ = _model("conv_bn_relu")
    with torch.no_grad():
        torch.testing.assert_close(run(after, x2), model(x2), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "add"])
def test_fold_batch_norm_without_batch_norm_changes_nothing(name):
    _, tb, _, ta = before_after(name, "fold-batch-norm")
    assert tb == ta


# ------------------------------------------------------------------------------------------ calibrate
def _lines(text: str) -> dict[str, str]:
    return {line.split(" = ")[0]: line for line in text.splitlines() if line.startswith("%")}


def test_calibrate_graph_text():
    before, tb, after, ta = before_after("conv_bn_relu", "calibrate")
    # Only annotations change: the ops and their arguments are identical.
    assert strip_notes(tb) == strip_notes(ta)
    assert "q=" not in tb
    lines = _lines(ta)
    assert re.search(r"# q=uint8 s=[\d.e-]+ zp=\d+", lines["%x"]), lines["%x"]
    # conv -> relu: the conv is fused into the relu, whose (non-negative) output has zero point 0.
    (conv1, conv2) = calls(after, aten.conv2d.default)
    assert "fused-into=%relu" in lines[f"%{conv1.name}"]
    assert re.search(r"q=uint8 s=[\d.e-]+ zp=0;", lines["%relu"]), lines["%relu"]
    assert meta.qparams(conv1) is None and meta.fused_into(conv1) == "relu"
    # The last conv feeds the graph output: nothing reads it quantized, so it gets no output qparams.
    assert "q=" not in lines[f"%{conv2.name}"] and meta.qparams(conv2) is None
    # Weights: symmetric narrow int8, one scale per output channel, zero points 0.
    for conv in (conv1, conv2):
        qp = meta.qparams(conv.args[1])
        assert qp is not None and qp.per_channel
        assert (qp.spec.dtype, qp.spec.qmin, qp.spec.qmax, qp.spec.axis) == ("int8", -127, 127, 0)
        assert qp.scale.shape == (8,) and bool((qp.zero_point == 0).all())
    s = stats("conv_bn_relu", "calibrate")["calibrate"]
    assert s["batches"] == 5 and s["observed activations"] == 2  # x and relu


def test_calibrate_add_and_passthrough_annotations():
    ta = graph_text(stage("everything", "calibrate"))
    lines = _lines(ta)
    for name in ("%x", "%relu", "%conv2d_1", "%add", "%flatten"):
        assert re.search(r"# q=uint8 s=[\d.e-]+ zp=\d+", lines[name]), lines[name]
    # flatten moves data only: it shares the add's qparams.
    q_add = re.search(r"q=(uint8 s=\S+ zp=\d+)", lines["%add"])[1]
    assert f"q={q_add}" in lines["%flatten"]
    assert "q=" not in lines["%linear"]


def test_calibrate_keeps_an_add_feeding_the_output_float():
    ta = graph_text(stage("add_float_out", "calibrate"))
    lines = _lines(ta)
    assert "q=uint8" in lines["%x"]
    for name in ("%conv2d", "%relu", "%conv2d_1", "%add"):
        assert "q=" not in lines[name] and "fused-into" not in lines[name], lines[name]


def test_calibrate_ranges_cover_the_calibration_data():
    _, x, calibration = _model("linear")
    after = stage("linear", "calibrate")
    lo = min(float(b.min()) for b in calibration)
    hi = max(float(b.max()) for b in calibration)
    scale, zp = meta.qparams(next(n for n in after.graph.nodes if n.op == "placeholder")).scalar()
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)  # minmax over all five batches
    assert zp == round(-lo / scale)


@pytest.mark.parametrize("name", ["conv_bn_relu", "add"])
def test_calibrate_does_not_change_values(name):
    _, x, _ = _model(name)
    before, _, after, _ = before_after(name, "calibrate")
    assert torch.equal(run(before, x), run(after, x))


def test_calibrate_without_data_is_refused(tmp_path):
    gm = _captured("linear")
    _, x, _ = _model("linear")
    with pytest.raises((ValueError, PassError), match="no calibration data"):
        run_pipeline(gm, as_passes("calibrate{progress=false}"), PassContext((x,)), Instruments(reproducer_dir=tmp_path))


# ------------------------------------------------------------------------------------------ insert-qdq
_Q_PT = r"qcompile\.quantize_per_tensor\(%(\w+), ([\d.e-]+), (\d+), 0, 255, uint8\) : uint8"
_DQ_PT = r"qcompile\.dequantize_per_tensor\(%(\w+), ([\d.e-]+), (\d+)\) : float32"
_Q_PC = r"qcompile\.quantize_per_channel\(%(\w+), %\w+, %\w+, 0, -127, 127, int8\) : int8"
_DQ_PC = r"qcompile\.dequantize_per_channel\(%(\w+), %\w+, %\w+, 0\) : float32"


@pytest.mark.parametrize(
    "name,n_weights,n_acts",
    [("conv_bn_relu", 2, 2), ("linear", 2, 2), ("add", 3, 4), ("everything", 3, 5), ("add_float_out", 2, 1)],
)
def test_insert_qdq_graph_text(name, n_weights, n_acts):
    before, tb, after, ta = before_after(name, "insert-qdq")
    assert "qcompile." not in tb
    q_pt, dq_pt = re.findall(_Q_PT, ta), re.findall(_DQ_PT, ta)
    q_pc, dq_pc = re.findall(_Q_PC, ta), re.findall(_DQ_PC, ta)
    # A quantize -> dequantize pair per quantized activation, with the same scale and zero point ...
    assert len(q_pt) == len(dq_pt) == n_acts, ta
    q_nodes = {n.name: n for n in calls(after, qc.quantize_per_tensor.default)}
    for src, scale, zp in dq_pt:
        q = q_nodes[src]
        assert (f"{q.args[1]:.6g}", str(q.args[2])) == (scale, zp)
    # ... and a per-channel pair per weight (symmetric narrow int8, axis 0).
    assert len(q_pc) == len(dq_pc) == n_weights, ta
    # Every conv/linear now reads dequantized values: activations per tensor, weights per channel.
    for target in (aten.conv2d.default, aten.linear.default):
        for op in calls(after, target):
            assert op.args[0].target == qc.dequantize_per_tensor.default
            assert op.args[1].target == qc.dequantize_per_channel.default
            assert op.args[1].args[0].args[0].op == "get_attr"
    # A value an activation absorbs (conv/linear -> relu) gets no pair of its own; the relu's output does.
    for relu in calls(after, aten.relu.default):
        if meta.qparams(relu) is not None:
            assert relu.args[0].target in (aten.conv2d.default, aten.linear.default)
            (user,) = relu.users
            assert user.target == qc.quantize_per_tensor.default
    # The graph output is the float result of the last op: no q/dq pair in front of it.
    assert output_node(after).target in (aten.conv2d.default, aten.linear.default, aten.add.Tensor)
    assert strip_notes(tb).count("aten.") == strip_notes(ta).count("aten.")
    s = stats(name, "insert-qdq")["insert-qdq"]
    assert s["weight pairs"] == n_weights and s["activation pairs"] == n_acts


@pytest.mark.parametrize("name", list(MODELS))
def test_insert_qdq_output_close_to_float(name):
    _, x, _ = _model(name)
    fake = run(stage(name, "insert-qdq"), x)
    ref = float_out(name)
    assert cosine(fake, ref) > 0.99
    assert not torch.equal(fake, ref)  # it really is fake-quantized
    assert float((fake - ref).abs().max()) < 0.05 * float(ref.abs().max())


# ------------------------------------------------------------------------------------------ fuse-qdq
@pytest.mark.parametrize(
    "name,int_op,n_int,axis",
    [("conv_bn_relu", "conv2d_int", 2, 1), ("linear", "linear_int", 2, -1), ("add", "conv2d_int", 3, 1)],
)
def test_fuse_qdq_graph_text(name, int_op, n_int, axis):
    before, tb, after, ta = before_after(name, "fuse-qdq")
    counts = op_counts(ta)
    assert counts[f"qcompile.{int_op}"] == n_int, ta
    # Every accumulator but the last is requantized to uint8; the last one feeds the float output.
    assert counts["qcompile.requantize"] == n_int - 1
    for float_op in ("aten.conv2d", "aten.linear", "aten.relu", "aten.add.Tensor"):
        assert float_op not in counts, ta
    # Weights are integer constants now: no weight q/dq left, only the input quantize and the output dequantize.
    assert counts["qcompile.quantize_per_tensor"] == 1 and "qcompile.dequantize_per_tensor" not in counts
    assert counts["qcompile.dequantize_per_channel"] == 1 and "qcompile.quantize_per_channel" not in counts
    assert re.search(rf"= qcompile\.{int_op}\(.*\) : int32\[", ta)
    for line in ta.splitlines():
        if "qcompile.requantize(" in line:
            assert re.search(r"\) : uint8\[", line) and "bits=8" in line, line
    for op in calls(after, getattr(qc, int_op).default):
        w = constant(after, op.args[1])
        assert w.dtype == torch.int8 and int(w.abs().max()) == 127
        assert op.args[4] is False  # zero points not folded yet
        assert constant(after, op.args[2]).dtype == torch.int32
    # The float output comes straight from the last int32 accumulator, one scale per output channel.
    out = output_node(after)
    assert out.target == qc.dequantize_per_channel.default
    acc = out.args[0]
    assert acc.target == getattr(qc, int_op).default and shapes.dtype(acc) == torch.int32
    assert out.args[3] == axis
    assert constant(after, out.args[1]).shape == (shapes.shape(acc)[axis],)
    assert re.search(rf"= qcompile\.dequantize_per_channel\(%{acc.name}, %\w+, %\w+, {axis}\) : float32\[", ta), ta


def test_fuse_qdq_relu_becomes_the_requantize_clamp():
    after = stage("conv_bn_relu", "fuse-qdq")
    (acc1, acc2) = calls(after, qc.conv2d_int.default)
    (rq,) = acc1.users
    assert rq.target == qc.requantize.default
    x, x_zp, scale, axis, out_zp, qmin, qmax, dtype = rq.args
    assert (x_zp, axis, out_zp, qmin, qmax, dtype) == (0, 1, 0, 0, 255, torch.uint8)
    assert constant(after, scale).shape == (8,)  # per-channel weights: one rescale per output channel
    assert acc2.args[0] is rq and acc2.args[3] == 0  # the next conv reads relu's uint8 output, zero point 0
    assert acc2.args[5:] == ([2, 2], [1, 1], [1, 1], 4)  # stride, padding, dilation, groups kept


def test_fuse_qdq_add_becomes_add_q():
    _, _, after, ta = before_after("add", "fuse-qdq")
    (add,) = calls(after, qc.add_q.default)
    assert all(a.target == qc.requantize.default for a in (add.args[0], add.args[3]))
    assert re.search(r"= qcompile\.add_q\(%relu_q, [\d.e-]+, 0, %\w+, [\d.e-]+, \d+, [\d.e-]+, \d+, 0, 255, uint8\)"
                     r" : uint8\[2, 4, 6, 6\]", ta), ta
    (head,) = [c for c in calls(after, qc.conv2d_int.default) if c.args[0] is add]
    assert head.args[3] == add.args[7]  # the head conv reads the add's zero point


def test_fuse_qdq_float_add_reads_float_conv_outputs():
    _, _, after, ta = before_after("add_float_out", "fuse-qdq")
    counts = op_counts(ta)
    assert counts["qcompile.conv2d_int"] == 2 and counts["qcompile.dequantize_per_channel"] == 2
    assert counts["aten.add.Tensor"] == 1 and counts["aten.relu"] == 1
    assert "qcompile.requantize" not in counts and "qcompile.add_q" not in counts
    (add,) = calls(after, aten.add.Tensor)
    assert add.args[0].target == aten.relu.default
    assert add.args[1].target == qc.dequantize_per_channel.default
    assert add.args[0].args[0].target == qc.dequantize_per_channel.default


@pytest.mark.parametrize("name", list(MODELS))
def test_fuse_qdq_output_close_to_float_and_fake_quant(name):
    _, x, _ = _model(name)
    gm = stage(name, "fuse-qdq")
    out = run(gm, x)
    ref = float_out(name)
    assert cosine(out, ref) > 0.99
    fake = run(stage(name, "insert-qdq"), x)
    # Integer arithmetic differs from fake quant only by rounding.
    assert cosine(out, fake) > 0.9999
    assert float((out - fake).abs().max()) <= 0.02 * float(ref.abs().max())
    if name != "add_float_out":
        # Every value between the input quantize and the output dequantize is an integer.
        for node in gm.graph.nodes:
            if node.op == "call_function" and node is not output_node(gm):
                assert not shapes.val(node).is_floating_point(), node.format_node()


# ------------------------------------------------------------------------------------------ fold-scales
_INT_OP = r"= qcompile\.(conv2d_int|linear_int)\(%\w+, %\w+, %(\w+), (\d+), (True|False)"


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_scales_graph_text(name):
    before, tb, after, ta = before_after(name, "fold-scales")
    cb, ca = op_counts(tb), op_counts(ta)
    assert "qcompile.requantize" not in ca and "qcompile.add_q" not in ca, ta
    assert ca["qcompile.requantize_fixed"] == cb["qcompile.requantize"]
    assert ca["qcompile.add_fixed"] == cb["qcompile.add_q"]
    # Zero points folded into the bias wherever the input zero point is not 0.
    ints = re.findall(_INT_OP, ta)
    assert ints and len(ints) == len(re.findall(_INT_OP, tb))
    assert all(f == "False" for *_, f in re.findall(_INT_OP, tb))
    for kind, bias, x_zp, folded in ints:
        assert folded == ("True" if int(x_zp) else "False"), (kind, bias, x_zp, folded)
        if folded == "True":
            assert bias.endswith("_bias_folded")
    assert any(f == "True" for *_, f in ints)  # the first layer reads the uint8 input, zero point != 0
    # Fixed-point multipliers: int32 m * 2^-shift approximates each float rescale to half an ulp of m.
    float_scales = [constant(before, rq.args[2]).double() for rq in calls(before, qc.requantize.default)]
    fixed = calls(after, qc.requantize_fixed.default)
    assert len(float_scales) == len(fixed)
    for real, rq in zip(float_scales, fixed):
        m, s = constant(after, rq.args[2]), constant(after, rq.args[3])
        assert m.dtype == torch.int32 and s.dtype == torch.int8
        assert bool(((m > 0) & (m.to(torch.int64) < 2**31)).all())
        assert int(m.max()) >= 2**30  # the largest rescale uses the full 31-bit mantissa
        assert bool(((s >= 1) & (s <= 62)).all())
        approx = m.double() / torch.pow(2.0, s.double())
        assert approx.shape == real.shape
        assert bool(((approx - real).abs() <= torch.pow(2.0, -s.double() - 1) * (1 + 1e-9)).all())
    # Float outputs still come straight from the (possibly re-folded) int32 accumulators.
    for dq in calls(after, qc.dequantize_per_channel.default):
        assert dq.args[0].target in (qc.conv2d_int.default, qc.linear_int.default)


def test_fold_scales_requantize_text():
    _, tb, _, ta = before_after("linear", "fold-scales")
    assert re.search(r"= qcompile\.requantize\(%linear_acc, 0, %relu_requant_scale, -1, 0, 0, 255, uint8\) : uint8\[4, 32\]", tb), tb
    assert re.search(r"= qcompile\.requantize_fixed\(%linear_int\w*, 0, %relu_q_multiplier, %relu_q_shift, -1, 0, 0, 255,"
                     r" uint8\) : uint8\[4, 32\]", ta), ta
    assert re.search(r"= qcompile\.linear_int\(%quantize_per_tensor\w*, %linear_weight_int, %linear_acc_bias_folded, \d+, True\)"
                     r" : int32\[4, 32\]", ta), ta


def test_fold_scales_add_fixed_text():
    _, _, _, ta = before_after("add", "fold-scales")
    m = re.search(r"= qcompile\.add_fixed\(%\w+, 0, (\d+), %\w+, (\d+), (\d+), (\d+), (\d+), 0, 255, uint8\) : uint8\[2, 4, 6, 6\]", ta)
    assert m, ta
    a_mult, _, b_mult, shift, _ = map(int, m.groups())
    assert 0 < a_mult < 2**31 and 0 < b_mult < 2**31 and 1 <= shift <= 62
    assert max(a_mult, b_mult) >= 2**30  # the larger rescale uses the full 31-bit mantissa


def test_fold_scales_folded_bias_is_exact():
    before = stage("linear", "fuse-qdq")
    after = stage("linear", "fold-scales")
    (lb, _) = calls(before, qc.linear_int.default)
    (la, _) = calls(after, qc.linear_int.default)
    x_zp = lb.args[3]
    assert x_zp != 0 and la.args[3] == x_zp and la.args[4] is True
    w = constant(before, lb.args[1]).to(torch.int64)
    want = constant(before, lb.args[2]).to(torch.int64) - x_zp * w.sum(dim=1)
    assert torch.equal(constant(after, la.args[2]).to(torch.int64), want)


def _values_of(gm: fx.GraphModule, x: torch.Tensor, targets) -> list[torch.Tensor]:
    values = integer_values(gm, x)
    return [values[n.name] for n in gm.graph.nodes if n.op == "call_function" and n.target in targets]


@pytest.mark.parametrize("name", list(MODELS))
def test_fold_scales_output_close_to_float_and_to_float_requantize(name):
    _, x, _ = _model(name)
    gm = stage(name, "fold-scales")
    out = run(gm, x)
    ref = float_out(name)
    assert cosine(out, ref) > 0.99
    unfolded_gm = stage(name, "fuse-qdq")
    unfolded = run(unfolded_gm, x)
    assert cosine(out, unfolded) > 0.9999
    # The accumulators are bit-identical (zero-point folding is exact) ...
    acc_before = _values_of(unfolded_gm, x, {qc.conv2d_int.default, qc.linear_int.default})
    acc_after = _values_of(gm, x, {qc.conv2d_int.default, qc.linear_int.default})
    assert len(acc_before) == len(acc_after) > 0
    # ... and fixed-point requantization is at most one code away from the float form.
    rq_before = _values_of(unfolded_gm, x, {qc.requantize.default, qc.add_q.default})
    rq_after = _values_of(gm, x, {qc.requantize_fixed.default, qc.add_fixed.default})
    assert len(rq_before) == len(rq_after)
    for a, b in zip(rq_before, rq_after):
        assert a.dtype == b.dtype
        assert int((a.to(torch.int32) - b.to(torch.int32)).abs().max()) <= 1
    if all(torch.equal(a, b) for a, b in zip(rq_before, rq_after)):
        # Same requantized inputs: the int32 accumulators must then agree exactly.
        for a, b in zip(acc_before, acc_after):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ whole pipeline
def test_pass_by_pass_equals_one_pipeline():
    """Running each pass in its own run_pipeline call gives the same graph as the whole string at once."""
    name = "everything"
    _, x, _ = _model(name)
    gm = _captured(name)
    for p in PIPELINE:
        gm = run_pipeline(gm, as_passes(p), _context(name), Instruments(verify_each=True))
    whole = stage(name, "fold-scales")
    assert graph_text(gm) == graph_text(whole)
    assert torch.equal(run(gm, x), run(whole, x))


def test_everything_final_graph_text():
    ta = graph_text(stage("everything", "fold-scales"))
    counts = op_counts(ta)
    assert counts["qcompile.conv2d_int"] == 2 and counts["qcompile.linear_int"] == 1
    assert counts["qcompile.requantize_fixed"] == 2 and counts["qcompile.add_fixed"] == 1
    assert counts["aten.flatten.using_ints"] == 1  # data movement stays, on uint8
    assert re.search(r"aten\.flatten\.using_ints\(%add_fixed\w*, 1\) : uint8\[2, 512\]", ta), ta
    assert re.search(r"qcompile\.linear_int\(%flatten_using_ints, %\w+, %\w+, \d+, True\) : int32\[2, 10\]", ta), ta
    assert re.search(r"^return \[%dequantize_per_channel\w*\] : \(float32\[2, 10\]\)$", ta, flags=re.M), ta
    assert not any(k.startswith("aten.") and k != "aten.flatten.using_ints" for k in counts), counts
    assert counts["qcompile.quantize_per_tensor"] == 1 and counts["qcompile.dequantize_per_channel"] == 1


def test_compiled_integer_graph_is_deterministic_and_survives_save_load(tmp_path):
    name = "everything"
    model, x, calibration = _model(name)
    cm = qcompile.compile(model, (x,), calibration=calibration, progress=False)
    y1, y2 = cm(x), cm(x)
    assert torch.equal(y1, y2)
    assert cosine(y1, float_out(name)) > 0.99
    # compile() runs the same default pipeline as the staged runs above: the same integer graph.
    staged = stage(name, "fold-scales")
    assert strip_notes(graph_text(cm.graph_module)) == strip_notes(graph_text(staged))
    assert torch.equal(y1, run(staged, x))
    ints = integer_values(cm.graph_module, x)
    assert any(v.dtype == torch.int32 for v in ints.values()) and any(v.dtype == torch.uint8 for v in ints.values())
    # A second compile of the same model and data is bit-identical.
    cm2 = qcompile.compile(model, (x,), calibration=calibration, progress=False)
    assert torch.equal(cm2(x), y1)
    assert graph_text(cm2.graph_module) == graph_text(cm.graph_module)

    path = cm.save(tmp_path / "artifact")
    loaded = qcompile.load(path)
    assert loaded.backend == cm.backend == "reference"
    assert torch.equal(loaded(x), y1)
    assert torch.equal(loaded(x), loaded(x))
    # Same nodes, ops, arguments and types (the artifact does not record the output node's type).
    drop_return_type = lambda t: re.sub(r"^(return .*?) : .*$", r"\1", strip_notes(t), flags=re.M)  # noqa: E731
    assert drop_return_type(graph_text(loaded.graph_module)) == drop_return_type(graph_text(cm.graph_module))
    loaded_ints = integer_values(loaded.graph_module, x)
    assert loaded_ints.keys() == ints.keys()
    for k, v in ints.items():
        assert loaded_ints[k].dtype == v.dtype and torch.equal(loaded_ints[k], v), k
    # Other inputs too, not only the one the graph was traced with.
    x2 = torch.randn_like(x)
    assert torch.equal(loaded(x2), cm(x2))
    # Saved again from the loaded model: still the same.
    again = qcompile.load(loaded.save(tmp_path / "again"))
    assert torch.equal(again(x2), cm(x2))
