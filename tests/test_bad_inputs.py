"""Bad input gets a clear error and changes nothing."""
import json
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import qcompile
from tests.artifacts import rerecord_digests
from tests.models import ConvBnRelu


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ConvBnRelu().eval()


X = torch.randn(2, 3, 8, 8)


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_calibration_names_input_and_batch(model, bad):
    before = _state(model)
    poisoned = X.clone()
    poisoned[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match=r"calibration batch 2, input 0 \(x\) contains (NaN|Inf)"):
        qcompile.compile(model, (X,), calibration=[X, X, poisoned], progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_missing_calibration_says_what_to_pass(model):
    with pytest.raises(ValueError, match=r"no calibration data.*calibration=\[batch"):
        qcompile.compile(model, (X,), progress=False)


def test_uncapturable_model_carries_exporter_reason():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export refuses
                return x * 2
            return x

    with pytest.raises(qcompile.CaptureError, match=r"torch.export could not capture DataDependent: .+"):
        qcompile.compile(DataDependent(), (X,), calibration=[X])


def test_compiled_model_checks_inputs(model):
    cm = qcompile.compile(model, (X,), calibration=[X], progress=False)
    with pytest.raises(TypeError, match=r"expected 1 input tensor\(s\) \(x: float32\[2, 3, 8, 8\]\), got 2"):
        cm(X, X)
    with pytest.raises(ValueError, match=r"input 0 \(x\): expected float32\[2, 3, 8, 8\], got float32\[1, 3, 8, 8\]"):
        cm(X[:1])
    with pytest.raises(ValueError, match=r"expected float32\[2, 3, 8, 8\], got float64\[2, 3, 8, 8\]"):
        cm(X.double())


def test_model_is_never_modified(model):
    model.train()
    before = _state(model)
    qcompile.compile(model, (X,), calibration=[X], progress=False)
    assert model.training  # mode restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.fixture
def artifact(model, tmp_path):
    cm = qcompile.compile(model, (X,), calibration=[X], progress=False)
    return cm.save(tmp_path / "art")


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(qcompile.ArtifactError, match="not a qcompile artifact"):
        qcompile.load(tmp_path / "nothing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text(json.dumps({"format": "onnx"}))
    with pytest.raises(qcompile.ArtifactError, match="manifest format"):
        qcompile.load(tmp_path / "foreign")
    pickle_file = tmp_path / "model.pt"
    torch.save({"a": 1}, pickle_file)
    with pytest.raises(qcompile.ArtifactError, match="expected a directory"):
        qcompile.load(pickle_file)


def test_load_rejects_corrupt_weights(artifact):
    data = (artifact / "weights.safetensors").read_bytes()
    (artifact / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(qcompile.ArtifactError, match="weights.safetensors does not match its SHA-256"):
        qcompile.load(artifact)
    rerecord_digests(artifact)  # digests that match the truncated file: safetensors' own check catches it
    with pytest.raises(qcompile.ArtifactError, match="weights.safetensors is corrupt"):
        qcompile.load(artifact)


@pytest.mark.parametrize("change", ["flip a byte", "swap graph.json", "list a file outside", "drop the digests"])
def test_load_checks_every_file_against_the_manifest_first(artifact, model, tmp_path, change):
    manifest = json.loads((artifact / "manifest.json").read_text())
    if change == "flip a byte":
        data = bytearray((artifact / "graph.json").read_bytes())
        data[len(data) // 2] ^= 1
        (artifact / "graph.json").write_bytes(bytes(data))
    elif change == "swap graph.json":  # another model's graph beside this model's weights and report
        x = torch.randn(1, 4)
        other = qcompile.compile(torch.nn.Linear(4, 2).eval(), (x,), calibration=[x], progress=False)
        (artifact / "graph.json").write_text((other.save(tmp_path / "other") / "graph.json").read_text())
    elif change == "list a file outside":
        manifest["files"]["../outside"] = "0" * 64
    else:
        manifest["files"] = {}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(qcompile.ArtifactError, match="SHA-256|outside the artifact|no file digests"):
        qcompile.load(artifact)


def test_load_rejects_corrupt_manifest(artifact):
    (artifact / "manifest.json").write_text("{not json")
    with pytest.raises(qcompile.ArtifactError, match="manifest.json is corrupt"):
        qcompile.load(artifact)


def test_load_never_resolves_arbitrary_callables(artifact):
    doc = json.loads((artifact / "graph.json").read_text())
    call = next(n for n in doc["nodes"] if n["op"] == "call_function")
    call["target"] = "os::system.default"
    (artifact / "graph.json").write_text(json.dumps(doc))
    rerecord_digests(artifact)
    with pytest.raises(qcompile.ArtifactError, match="outside the allowed namespaces"):
        qcompile.load(artifact)


INJECTED = "x=__import__('pathlib').Path('{marker}').touch() or x"


@pytest.mark.parametrize("field", ["placeholder target", "node name", "get_attr target", "keyword"])
def test_load_never_runs_code_from_names_in_the_graph(artifact, tmp_path, field):
    """fx turns node names and targets into the Python source of forward(): an edited name must not run."""
    marker = tmp_path / "ran"
    doc = json.loads((artifact / "graph.json").read_text())
    injected = INJECTED.format(marker=marker)
    placeholder = next(n for n in doc["nodes"] if n["op"] == "placeholder")
    if field == "placeholder target":
        placeholder["target"] = injected
    elif field == "node name":
        next(n for n in doc["nodes"] if n["op"] == "call_function")["name"] = injected
    elif field == "get_attr target":
        constant = next(n for n in doc["nodes"] if n["op"] == "get_attr")
        tensors = safetensors.torch.load_file(str(artifact / "weights.safetensors"))
        tensors[injected] = tensors[constant["target"]].clone()
        safetensors.torch.save_file(tensors, str(artifact / "weights.safetensors"))
        constant["target"] = injected
    else:
        next(n for n in doc["nodes"] if n["op"] == "call_function")["kwargs"][injected] = 1
    (artifact / "graph.json").write_text(json.dumps(doc))
    rerecord_digests(artifact)
    with pytest.raises(qcompile.ArtifactError, match="invalid .*a Python identifier is required"):
        qcompile.load(artifact)
    assert not marker.exists()


@pytest.mark.parametrize("op, message", [
    ("aten::from_file.default", "side effects"),  # reads any file into the output
    ("aten::add_.Tensor", "writes its arguments"),  # in place on an input
    ("aten::add.out", "writes its arguments"),
])
def test_load_rejects_ops_that_touch_files_or_write_their_arguments(artifact, op, message):
    doc = json.loads((artifact / "graph.json").read_text())
    next(n for n in doc["nodes"] if n["op"] == "call_function")["target"] = op
    (artifact / "graph.json").write_text(json.dumps(doc))
    rerecord_digests(artifact)
    with pytest.raises(qcompile.ArtifactError, match=message):
        qcompile.load(artifact)


def test_unknown_target_and_pipeline_errors(model):
    with pytest.raises(ValueError, match="unknown target 'tpu'; available: arm, arm-a55, arm-i8mm, cuda, reference, x86"):
        qcompile.compile(model, (X,), target="tpu", calibration=[X])
    with pytest.raises(ValueError, match="unknown pass 'fold-everything'"):
        qcompile.compile(model, (X,), calibration=[X], pipeline="fold-batch-norm,fold-everything")
    with pytest.raises(ValueError, match="pass 'calibrate' has no option 'bins'"):
        qcompile.compile(model, (X,), calibration=[X], pipeline="calibrate{bins=3}")
    with pytest.raises(ValueError, match="method must be one of"):
        qcompile.compile(model, (X,), calibration=[X], pipeline="calibrate{method=magic},insert-qdq", progress=False)


def test_keyword_inputs_bind_by_the_forward_s_names(model):
    cm = qcompile.compile(model, (X,), calibration=[X], progress=False)
    assert torch.equal(cm(x=X), cm(X))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) y; the model takes \(x: float32\[2, 3, 8, 8\]\)"):
        cm(X, y=X)
    with pytest.raises(TypeError, match=r"missing input 'x'"):
        cm(y=X)


def test_nan_inputs_are_refused_at_call_time(model):
    cm = qcompile.compile(model, (X,), calibration=[X], progress=False)
    poisoned = X.clone()
    poisoned[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match=r"input 0 \(x\) contains NaN, which a quantized model cannot represent"):
        cm(poisoned)
    assert torch.isfinite(cm(X.clamp(-1, 1) * float("inf"))).all()  # infinities saturate, as quantize defines


class ReturnsModelOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x):
        # imported (so registered with torch's pytree) by the test before capture
        from transformers.modeling_outputs import BaseModelOutput

        return BaseModelOutput(last_hidden_state=self.fc(x))


def test_outputs_of_a_type_another_package_registers_name_the_module_to_import(tmp_path):
    import transformers.modeling_outputs  # noqa: F401  (registers ModelOutput classes with torch's pytree)

    x = torch.randn(2, 4)
    path = qcompile.compile(ReturnsModelOutput().eval(), (x,), calibration=[x], progress=False).save(tmp_path / "art")
    load = f"import qcompile; qcompile.load({str(path)!r})"
    fresh = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True)  # transformers not imported
    assert "ArtifactError" in fresh.stderr
    assert ("the model's outputs are transformers.modeling_outputs.BaseModelOutput, a container type its package "
            "registers with torch when imported: `import transformers.modeling_outputs` before qcompile.load") in fresh.stderr
    after_import = subprocess.run([sys.executable, "-c", f"import transformers.modeling_outputs; {load}"],
                                  capture_output=True, text=True)
    assert after_import.returncode == 0, after_import.stderr


class Embeds(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(50, 8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, ids):
        return self.fc(self.table(ids))


def test_indices_outside_an_embedding_table_are_refused_before_any_gather():
    """A compiled gather reads memory at the index unchecked (TVM's take): calls and calibration check."""
    ids = torch.randint(0, 50, (1, 6))
    cm = qcompile.compile(Embeds().eval(), (ids,), calibration=[ids], progress=False)
    for bad, shown in ((50, 50), (-1, -1), (500000, 500000)):
        with pytest.raises(ValueError, match=rf"input 0 \(ids\) holds the index {shown}, outside the embedding table's 50 rows"):
            cm(torch.tensor([[1, 2, 3, 4, 5, bad]]))
    with pytest.raises(qcompile.UsageError, match=r"calibration batch 0, input 0 \(ids\) holds the index 77"):
        qcompile.compile(Embeds().eval(), (ids,), calibration=[torch.tensor([[1, 2, 3, 4, 5, 77]])], progress=False)
