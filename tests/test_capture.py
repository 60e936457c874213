"""Capture of models as users bring them: the many spellings of a weighted layer become integer, causal LMs
capture with their default config, a batch-1 example serves a dynamic batch, and what torch.export cannot
capture comes with advice."""
import pytest
import torch
from torch import nn
from torch.export import Dim

import qcompile
import qcompile.frontend.capture
from qcompile.ir.printer import target_name


class Spellings(nn.Module):
    """One layer in each spelling: conv1d (strided, grouped, dilated), addmm with an [in, out] weight
    (GPT-2's Conv1D), matmul and mm with a constant weight, Linear + BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, stride=2, padding=1)
        self.grouped = nn.Conv1d(8, 8, 3, groups=4, dilation=2)
        self.conv1d_weight = nn.Parameter(torch.randn(8, 12) * 0.3)  # GPT-2 Conv1D: [in, out]
        self.conv1d_bias = nn.Parameter(torch.randn(12) * 0.1)
        self.proj = nn.Parameter(torch.randn(12, 6) * 0.3)
        self.head = nn.Parameter(torch.randn(6 * 7, 5) * 0.1)
        self.fc = nn.Linear(5, 7)
        self.bn = nn.BatchNorm1d(7)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        y = torch.relu(self.grouped(torch.relu(self.conv(x)))).transpose(1, 2)  # [b, 7, 8]
        y = torch.addmm(self.conv1d_bias, y.reshape(-1, 8), self.conv1d_weight).view(x.shape[0], -1, 12)
        y = torch.relu(torch.matmul(y, self.proj))  # [b, 7, 6]
        y = torch.mm(y.reshape(x.shape[0], -1), self.head)
        return self.bn(self.fc(y))


@pytest.fixture(scope="module")
def spellings():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 24)
    calibration = [torch.randn(2, 4, 24) for _ in range(4)]
    return Spellings().eval(), x, calibration


def test_every_spelling_of_a_weighted_layer_is_integer(spellings):
    model, x, calibration = spellings
    cm = qcompile.compile(model, (x,), calibration=calibration, progress=False, strict=True)
    ops = {target_name(n) for n in cm.graph_module.graph.nodes if n.op == "call_function"}
    assert {"qcompile.conv2d_int", "qcompile.linear_int"} <= ops
    assert not ops & {"aten.addmm", "aten.mm", "aten.matmul", "aten.conv1d", "aten.batch_norm", "aten.linear"}
    assert cm.report().coverage_line().startswith("coverage: 100.0%")
    assert (cm(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


def test_the_spellings_run_bit_exact_on_x86(spellings):
    model, x, calibration = spellings
    reference = qcompile.compile(model, (x,), calibration=calibration, progress=False)
    x86 = qcompile.compile(model, (x,), calibration=calibration, progress=False, target="x86")
    assert torch.equal(x86(x), reference(x))


def test_causal_lms_capture_with_their_default_config():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    assert model.config.use_cache  # the default, whose DynamicCache torch.export cannot output
    ids = torch.randint(0, 100, (1, 8))
    cm = qcompile.compile(model, (ids,), calibration=[torch.randint(0, 100, (1, 8)) for _ in range(2)], progress=False)
    assert model.config.use_cache  # restored
    logits = cm(ids).logits
    expected = model(ids, use_cache=False).logits
    assert logits.shape == expected.shape and (logits - expected).abs().max() < 0.1 * expected.abs().max()


@pytest.mark.parametrize("batch", [Dim("batch", max=16), Dim("batch")])  # bounded, and unbounded (once a crash)
def test_a_batch_1_example_serves_a_dynamic_batch(batch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    cm = qcompile.compile(model, (torch.randn(1, 8),), calibration=[torch.randn(4, 8)], progress=False,
                          dynamic_shapes={"input": {0: batch}})
    rows = torch.randn(5, 8)
    assert torch.equal(cm(rows), torch.cat([cm(r[None]) for r in rows]))


def test_data_dependent_control_flow_comes_with_advice():
    class Branches(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(qcompile.CaptureError, match=r"(?s)could not capture Branches.*qcompile: this is usually a "
                       r"Python `if` .* on a tensor's value.*torch.where, torch.cond"):
        qcompile.compile(Branches(), (torch.randn(2),), calibration=[torch.randn(2)], progress=False)


class SamePadding(nn.Module):
    """TensorFlow-style "same" padding: an asymmetric F.pad before a strided conv, then a padded value."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(nn.functional.pad(x, (0, 1, 0, 1))))
        return self.head(nn.functional.pad(y, (1, 1, 1, 1), value=0.25))


def test_constant_padding_stays_integer_and_runs_bit_exact_on_x86():
    torch.manual_seed(0)
    model = SamePadding().eval()
    x = torch.randn(1, 3, 9, 9)
    calibration = [torch.randn(1, 3, 9, 9) for _ in range(4)]
    cm = qcompile.compile(model, (x,), calibration=calibration, progress=False, strict=True)
    integer_pads = [n for n in cm.graph_module.graph.nodes if target_name(n) == "aten.constant_pad_nd"
                    and not n.args[0].meta["val"].is_floating_point()]
    assert len(integer_pads) == 1  # the one between the convs (the model input's pad runs before its quantize)
    assert (cm(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
    x86 = qcompile.compile(model, (x,), calibration=calibration, progress=False, target="x86")
    assert torch.equal(x86(x), cm(x))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(8, 16, num_layers=2, batch_first=True)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])  # the last step: a negative select, once read out of bounds on x86


def _recurrent(cell):
    torch.manual_seed(0)
    model = Recurrent(cell).eval()
    x = torch.randn(2, 5, 8)
    calibration = [torch.randn(2, 5, 8) for _ in range(8)]
    return model, x, calibration, qcompile.compile(model, (x,), calibration=calibration, progress=False, strict=True)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_layers_unroll_into_integer_gate_linears(cell):
    model, x, _, cm = _recurrent(cell)
    assert cm.report().coverage_line().startswith("coverage: 100.0%")
    assert (cm(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


@pytest.mark.parametrize("cell", [nn.LSTM, pytest.param(nn.GRU, marks=pytest.mark.zoo), pytest.param(nn.RNN, marks=pytest.mark.zoo)])
def test_unrolled_recurrent_layers_run_bit_exact_on_x86(cell):
    model, x, calibration, cm = _recurrent(cell)
    x86 = qcompile.compile(model, (x,), calibration=calibration, progress=False, target="x86")
    assert torch.equal(x86(x), cm(x))


class Upsampling(nn.Module):
    """Transposed convolutions: strided with padding, output padding and groups; 2x2/2 (a U-Net's up step); 1-D."""

    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.up2 = nn.ConvTranspose2d(6, 2, 2, stride=2)
        self.up1d = nn.ConvTranspose1d(4, 4, 4, stride=2)

    def forward(self, x, y):
        return self.up2(torch.relu(self.up(x))), self.up1d(y)


def test_transposed_convs_become_direct_integer_convs_bit_exact_on_x86():
    torch.manual_seed(0)
    model = Upsampling().eval()
    example = (torch.randn(1, 4, 5, 5), torch.randn(1, 4, 7))
    calibration = [(torch.randn(1, 4, 5, 5), torch.randn(1, 4, 7)) for _ in range(6)]
    captured = qcompile.frontend.capture.capture(model, example)
    for canonical, original in zip(captured.gm(*example), model(*example)):  # the rewrite is exact in float
        torch.testing.assert_close(canonical, original, atol=1e-6, rtol=0)
    cm = qcompile.compile(model, example, calibration=calibration, progress=False, strict=True)
    assert cm.report().coverage_line().startswith("coverage: 100.0%")
    for got, want in zip(cm(*example), model(*example)):
        assert (got - want).abs().max() < 0.05 * want.abs().max()
    x86 = qcompile.compile(model, example, calibration=calibration, progress=False, target="x86")
    assert all(torch.equal(a, b) for a, b in zip(x86(*example), cm(*example)))


class Volumetric(nn.Module):
    """conv3d: strided, padded and dilated unevenly per axis, with BatchNorm3d; grouped without bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, stride=(2, 1, 2), padding=(1, 1, 0), dilation=(2, 1, 1))
        self.bn = nn.BatchNorm3d(8)
        self.grouped = nn.Conv3d(8, 4, (2, 3, 3), groups=2, padding=1, bias=False)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.grouped(torch.relu(self.bn(self.conv(x))))


def test_conv3d_becomes_an_integer_conv2d_over_depth_windows_bit_exact_on_x86():
    torch.manual_seed(0)
    model = Volumetric().eval()
    x = torch.randn(2, 3, 7, 9, 10)
    calibration = [torch.randn(2, 3, 7, 9, 10) for _ in range(4)]
    captured = qcompile.frontend.capture.capture(model, (x,))
    torch.testing.assert_close(captured.gm(x)[0], model(x), atol=1e-5, rtol=0)  # the rewrite is exact in float
    cm = qcompile.compile(model, (x,), calibration=calibration, progress=False, strict=True)
    ops = [target_name(n) for n in cm.graph_module.graph.nodes if n.op == "call_function"]
    assert ops.count("qcompile.conv2d_int") == 2 and not {"aten.conv3d", "aten.batch_norm"} & set(ops)
    assert cm.report().extra["stats"]["fold-batch-norm"]["folded"] == 1
    assert cm.report().coverage_line().startswith("coverage: 100.0%")
    assert cm(x).shape == model(x).shape and (cm(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
    x86 = qcompile.compile(model, (x,), calibration=calibration, progress=False, target="x86")
    assert torch.equal(x86(x), cm(x))


class EinsumAndConv1dBn(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3)
        self.bn = nn.BatchNorm1d(8)
        self.w_in_out = nn.Parameter(torch.randn(8, 6) * 0.3)
        self.w_out_in = nn.Parameter(torch.randn(5, 6) * 0.3)
        self.mix = nn.Parameter(torch.randn(5, 5))
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).transpose(1, 2)  # [b, l, 8]
        h = torch.relu(torch.einsum("bld,de->ble", h, self.w_in_out))
        h = torch.einsum("ble,fe->blf", h, self.w_out_in)
        return torch.einsum("blf,fg->bgl", h, self.mix)  # output permuted: no linear, stays einsum


def test_einsum_with_a_weight_and_batchnorm_after_conv1d_are_integer():
    torch.manual_seed(0)
    model = EinsumAndConv1dBn().eval()
    x = torch.randn(2, 4, 12)
    with pytest.warns(qcompile.FloatWeightsWarning, match=r"1 weighted layer\(s\) stay float.*einsum"):
        cm = qcompile.compile(model, (x,), calibration=[torch.randn(2, 4, 12) for _ in range(4)], progress=False)
    ops = [target_name(n) for n in cm.graph_module.graph.nodes if n.op == "call_function"]
    assert ops.count("qcompile.linear_int") == 2 and ops.count("aten.einsum") == 1 and "aten.batch_norm" not in ops
    assert cm.report().extra["stats"]["fold-batch-norm"]["folded"] == 1
    assert (cm(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()


class Bags(nn.Module):
    """EmbeddingBag over a [bags, L] input (fixed bag size) in a mode, feeding a Linear."""

    def __init__(self, mode: str):
        super().__init__()
        self.bag = nn.EmbeddingBag(50, 16, mode=mode)
        self.fc = nn.Linear(16, 4)

    def forward(self, ids):
        return self.fc(self.bag(ids))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bags_of_one_size_gather_an_integer_table_bit_exact_on_x86(mode):
    torch.manual_seed(0)
    model = Bags(mode).eval()
    ids = torch.randint(0, 50, (3, 5))
    calibration = [torch.randint(0, 50, (3, 5)) for _ in range(8)]
    cm = qcompile.compile(model, (ids,), calibration=calibration, progress=False, strict=True)
    ops = {target_name(n) for n in cm.graph_module.graph.nodes if n.op == "call_function"}
    assert "aten.embedding" in ops and "aten.embedding_bag" not in ops
    assert cm.report().coverage_line().startswith("coverage: 100.0%")
    assert (cm(ids) - model(ids)).abs().max() < 0.05 * model(ids).abs().max()
    if mode == "max":  # amax on int8 table codes, shifted to uint8 for the Linear: the x86-specific parts
        x86 = qcompile.compile(model, (ids,), calibration=calibration, progress=False, target="x86")
        assert torch.equal(x86(ids), cm(ids))


class OffsetBags(nn.Module):
    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(50, 16, mode="sum")

    def forward(self, ids, offsets):
        return self.bag(ids, offsets)


def test_embedding_bags_of_free_sizes_stay_float_and_say_so():
    torch.manual_seed(0)
    model = OffsetBags().eval()
    example = (torch.randint(0, 50, (10,)), torch.tensor([0, 3, 7]))
    with pytest.warns(qcompile.FloatWeightsWarning, match="embedding_bag"):
        cm = qcompile.compile(model, example, calibration=[example], progress=False)
    torch.testing.assert_close(cm(*example), model(*example))


def test_ids_outside_an_embedding_bags_table_are_refused_by_name():
    """The bag's ids reach the gather through a flatten: the bound check must follow them there (x86's
    gather reads memory at any index)."""
    torch.manual_seed(0)
    model = Bags("max").eval()
    ids = torch.randint(0, 50, (3, 5))
    cm = qcompile.compile(model, (ids,), calibration=[ids], progress=False)
    with pytest.raises(ValueError, match=r"input 0 \(ids\) holds the index 60, outside the embedding table's 50 rows"):
        cm(torch.full((3, 5), 60))
