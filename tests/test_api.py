"""Public API: custom passes, pipelines, instruments, reproducers, the CLI."""
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

import qcompile
from qcompile.cli import app
from tests.models import ConvBnRelu

X = torch.randn(2, 3, 8, 8)
qc = torch.ops.qcompile


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ConvBnRelu().eval()


@qcompile.register_pass
@dataclass(frozen=True)
class ClampOutputPass(qcompile.Pass):
    """A user pass: clamp every graph output to [-bound, bound]."""

    name = "clamp-output"
    bound: float = 0.01

    def run(self, gm, ctx):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        with gm.graph.inserting_before(out):
            new = [gm.graph.call_function(torch.ops.aten.clamp.default, (v, -self.bound, self.bound)) for v in out.args[0]]
        out.args = (tuple(new),)
        gm.recompile()
        ctx.count(self.name, "clamped", len(new))
        return qcompile.PassResult(gm, True)


@qcompile.register_pass
@dataclass(frozen=True)
class CountIntegerOpsPass(qcompile.Pass):
    name = "count-integer-ops"

    def run(self, gm, ctx):
        n = sum(1 for node in gm.graph.nodes if str(node.target).startswith("qcompile."))
        ctx.count(self.name, "integer ops", n)
        return qcompile.PassResult(gm, False)


def test_custom_pass_runs_changes_graph_and_is_dumped(model, tmp_path):
    cm = qcompile.compile(model, (X,), calibration=[X], passes=[ClampOutputPass()], dump_dir=tmp_path, progress=False)
    assert cm(X).abs().max() <= 0.01 + 1e-7
    assert qcompile.compile(model, (X,), calibration=[X], progress=False)(X).abs().max() > 0.01
    dump = (tmp_path / "07-clamp-output.txt").read_text()
    assert "aten.clamp(" in dump
    assert "clamp-output" in (tmp_path / "index.html").read_text()
    assert cm.report().extra["stats"]["clamp-output"]["clamped"] == 1


def test_pipeline_string_with_options_and_custom_pass(model, tmp_path):
    pipeline = "fold-batch-norm,calibrate{method=percentile,percentile=99.9},insert-qdq,fuse-qdq,fold-scales,count-integer-ops"
    cm = qcompile.compile(model, (X,), calibration=[X], pipeline=pipeline, progress=False)
    assert cm.report().extra["stats"]["count-integer-ops"]["integer ops"] >= 4


def test_placing_a_pass_before_a_named_pass(model, tmp_path):
    qcompile.compile(
        model, (X,), calibration=[X], passes=[qcompile.at(CountIntegerOpsPass(), before="fold-scales")],
        dump_dir=tmp_path, progress=False,
    )
    names = sorted(p.stem for p in tmp_path.glob("*.txt"))
    assert names.index("06-count-integer-ops") < names.index("07-fold-scales")
    with pytest.raises(ValueError, match="not in the pipeline"):
        qcompile.compile(model, (X,), calibration=[X], passes=[qcompile.at(CountIntegerOpsPass(), after="nope")])


def test_fake_quant_graph_is_runnable_and_close_to_float(model):
    cm = qcompile.compile(model, (X,), calibration=[X], pipeline="fold-batch-norm,calibrate,insert-qdq", progress=False)
    targets = {n.target for n in cm.graph_module.graph.nodes}
    assert qc.quantize_per_tensor.default in targets and qc.dequantize_per_channel.default in targets
    assert torch.allclose(cm(X), model(X), atol=0.05)


def test_env_dump_dir_and_print_after(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QCOMPILE_DUMP_DIR", str(tmp_path / "env-dump"))
    monkeypatch.setenv("QCOMPILE_PRINT_AFTER", "fuse-qdq")
    qcompile.compile(model, (X,), calibration=[X], progress=False)
    err = capsys.readouterr().err
    assert "// ----- after fuse-qdq -----" in err and "qcompile.conv2d_int" in err
    assert "after fold-scales" not in err
    assert (tmp_path / "env-dump" / "06-fold-scales.txt").exists()


@qcompile.register_pass
@dataclass(frozen=True)
class BrokenPass(qcompile.Pass):
    name = "broken"

    def run(self, gm, ctx):
        raise RuntimeError("boom")


def test_failing_pass_writes_reproducer(model, tmp_path):
    with pytest.raises(qcompile.PassError, match="pass 'broken' failed: RuntimeError: boom") as info:
        qcompile.compile(model, (X,), calibration=[X], passes=[BrokenPass()], dump_dir=tmp_path, progress=False)
    repro = info.value.reproducer
    assert (repro / "pipeline.txt").read_text().strip().endswith("fold-scales,broken")
    assert "boom" in (repro / "error.txt").read_text()
    result = CliRunner().invoke(app, ["reproduce", str(repro)])
    assert result.exit_code == 1 and "raised again: RuntimeError: boom" in result.output


def test_cli_compile_and_inspect(tmp_path):
    spec = tmp_path / "net.py"
    spec.write_text(
        "import torch\nfrom tests.models import ConvBnRelu\n"
        "def build():\n    torch.manual_seed(0)\n    x = torch.randn(2, 3, 8, 8)\n"
        "    return {'model': ConvBnRelu().eval(), 'example_inputs': (x,), 'calibration': [x]}\n"
    )
    runner = CliRunner()
    out = tmp_path / "art"
    result = runner.invoke(app, ["compile", f"{spec}:build", "--out", str(out), "--dump-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert "qcompile report" in result.output and (out / "manifest.json").exists()
    result = runner.invoke(app, ["inspect", str(out), "--graph"])
    assert result.exit_code == 0 and "qcompile.conv2d_int" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "d")])
    assert result.exit_code == 0 and "06-fold-scales" in result.output
    result = runner.invoke(app, ["inspect", str(tmp_path / "d"), "--pass", "insert-qdq"])
    assert result.exit_code == 0 and "quantize_per_tensor" in result.output
    result = runner.invoke(app, ["compile", f"{spec}:build", "--out", str(tmp_path / "mixed"), "--bits", "mixed",
                                 "--budget", "6", "--plot", str(tmp_path / "bits.png")])
    assert result.exit_code == 0, result.output
    assert "bit allocation" in result.output and (tmp_path / "bits.png").stat().st_size > 10_000
    result = runner.invoke(app, ["compile", "nonexistent.py:build", "--out", str(out)])
    assert result.exit_code != 0 and "expected FILE.py:FUNCTION" in result.output


def test_svg_dump_is_written_when_graphviz_is_installed(model, tmp_path):
    import shutil

    assert shutil.which("dot"), "make test installs Debian's graphviz"
    qcompile.compile(model, (X,), calibration=[X], dump_dir=tmp_path, progress=False)
    svg = (tmp_path / "05-fuse-qdq.svg").read_text()
    assert "<svg" in svg and "#ffd966" in svg  # nodes created by the pass are highlighted
