"""Mutated artifacts: whatever is done to a saved artifact's files, load() returns a model or raises
ArtifactError / UsageError; it never crashes, hangs, runs code or raises anything else.

The mutations are applied with the manifest's digests recorded again (tests/artifacts.py), as an attacker
could, so that they reach the parsers behind the digest check. QCOMPILE_FUZZ_EXAMPLES sets the count
(CI: 2,000)."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompile
from tests.artifacts import rerecord_digests

EXAMPLES = int(os.environ.get("QCOMPILE_FUZZ_EXAMPLES", "2000"))
MARKER = "qcompile_fuzz_ran"
# Values that have broken parsers before: wrong types, huge and negative numbers, code in strings.
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from([f"__import__('pathlib').Path('{MARKER}').touch()", "x; import os", "aten::from_file.default",
                     "aten::add_.Tensor", "operator.getitem", "qcompile::linear_int.default", "../x", "",
                     "float32", "uint8"]),
    st.lists(st.integers(-3, 300), max_size=5), st.dictionaries(st.sampled_from(["node", "dtype", "list", "float"]),
                                                               st.integers(-1, 3), max_size=2),
)
ERRORS = (qcompile.ArtifactError, qcompile.UsageError)


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.linear = torch.nn.Linear(4, 3)
        self.norm = torch.nn.LayerNorm(3)

    def forward(self, x):
        return self.norm(self.linear(torch.relu(self.conv(x)).mean((2, 3))))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    path = tmp_path_factory.mktemp("fuzz") / "artifact"
    qcompile.compile(Model().eval(), (x,), calibration=[x], progress=False).save(path)
    return path, x


def mutate_json(doc, path: list, value):
    """Set the element at `path` (indices into nested lists/dicts, taken modulo their sizes) to `value`."""
    node = doc
    for step in path[:-1]:
        if isinstance(node, dict) and node:
            node = node[sorted(node)[step % len(node)]]
        elif isinstance(node, list) and node:
            node = node[step % len(node)]
        else:
            return
    if isinstance(node, dict) and node:
        node[sorted(node)[path[-1] % len(node)]] = value
    elif isinstance(node, list) and node:
        node[path[-1] % len(node)] = value


MUTATIONS = st.one_of(
    st.tuples(st.just("json"), st.sampled_from(["graph.json", "manifest.json"]),
              st.lists(st.integers(0, 60), min_size=1, max_size=6), ODD),
    st.tuples(st.just("flip"), st.sampled_from(["graph.json", "weights.safetensors", "manifest.json"]),
              st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.sampled_from(["graph.json", "weights.safetensors", "manifest.json"]),
              st.floats(0, 1), st.none()),
)


def apply(directory: Path, mutation) -> None:
    kind, name, where, value = mutation
    path = directory / name
    if kind == "json":
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return  # an earlier mutation broke the file already
        mutate_json(doc, where, value)
        path.write_text(json.dumps(doc))
    elif kind == "flip":
        data = bytearray(path.read_bytes())
        if not data:
            return
        data[where % len(data)] ^= value
        path.write_bytes(bytes(data))
    else:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * where)])
    if name != "manifest.json":
        try:
            rerecord_digests(directory)
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass  # the manifest itself was mutated before: load() must say so


def test_mutated_artifacts_load_or_raise_a_clear_error(saved, tmp_path_factory, monkeypatch):
    original, x = saved
    work = tmp_path_factory.mktemp("mutated")
    monkeypatch.chdir(work)  # an injected Path(MARKER).touch() would land here
    seen = {"loaded": 0, "rejected": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(MUTATIONS, min_size=1, max_size=3))
    def check(mutations):
        directory = work / "artifact"
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(original, directory)
        for mutation in mutations:
            apply(directory, mutation)
        try:
            model = qcompile.load(directory)
            with torch.no_grad():
                try:
                    model(x)
                except (RuntimeError, ValueError, TypeError, IndexError, AttributeError):
                    pass  # a graph with odd but allowed arguments may fail inside an op: it runs no other code
            seen["loaded"] += 1
        except ERRORS:
            seen["rejected"] += 1
        assert not (work / MARKER).exists(), f"code ran: {mutations}"

    check()
    print(f"mutated artifacts: {sum(seen.values())} ({seen['rejected']} rejected, {seen['loaded']} loaded)")
    assert sum(seen.values()) >= min(EXAMPLES, 2000)
