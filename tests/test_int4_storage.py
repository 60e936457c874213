"""int4 constants: typed storage bits on the weight constants, packed two per byte in the artifact
(quant/packing.py), unpacked bit-identically by qcompile.load, counted at 4 bits by the report."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import qcompile
from qcompile.errors import ArtifactError
from qcompile.ir import meta
from qcompile.ir.verify import VerificationError, verify
from qcompile.quant.packing import pack_int4, unpack_int4
from tests.artifacts import rerecord_digests


def mlp():
    torch.manual_seed(0)
    # 255 * 129 and 129 * 33 weights: odd element counts, so the last byte holds one nibble.
    return nn.Sequential(nn.Linear(255, 129), nn.ReLU(), nn.Linear(129, 33)).eval()


X = torch.randn(4, 255, generator=torch.Generator().manual_seed(1))
CALIBRATION = [torch.randn(8, 255, generator=torch.Generator().manual_seed(i)) for i in range(3)]


def compiled(bits):
    return qcompile.compile(mlp(), (X,), calibration=CALIBRATION, bits=bits, progress=False, verify_each=True)


def weight_nodes(gm):
    return [n for n in gm.graph.nodes if n.op == "get_attr" and meta.storage_bits(n) is not None]


def test_nibble_order_low_first_and_odd_count():
    values = torch.tensor([1, -2, 7, -8, 0], dtype=torch.int8)
    packed = pack_int4(values)
    assert packed.tolist() == [0xE1, 0x87, 0x00]  # value 2i in the low nibble of byte i
    assert torch.equal(unpack_int4(packed, (5,)), values)
    every = torch.arange(-8, 8, dtype=torch.int8).reshape(4, 4)
    assert torch.equal(unpack_int4(pack_int4(every), (4, 4)), every)


def test_out_of_range_values_refuse_to_pack():
    with pytest.raises(ValueError, match="do not fit int4"):
        pack_int4(torch.tensor([8], dtype=torch.int8))


def test_int4_weights_carry_storage_bits_and_round_trip_bit_identically(tmp_path):
    cm = compiled(4)
    weights = weight_nodes(cm.graph_module)
    assert len(weights) == 2 and all(meta.storage_bits(n) == 4 for n in weights)
    loaded = qcompile.load(cm.save(tmp_path / "int4"))
    assert [meta.storage_bits(n) for n in weight_nodes(loaded.graph_module)] == [4, 4]
    want = dict(cm.graph_module.named_buffers())
    got = dict(loaded.graph_module.named_buffers())
    assert want.keys() == got.keys()
    for name, t in want.items():
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    assert torch.equal(loaded(X), cm(X))
    stored = load_file(str(tmp_path / "int4" / "weights.safetensors"))
    w = weights[0]
    assert stored[w.target].dtype == torch.uint8 and stored[w.target].numel() == (255 * 129 + 1) // 2


def test_verifier_refuses_a_4_bit_constant_holding_wider_values():
    gm = compiled(4).graph_module
    weight = weight_nodes(gm)[0]
    getattr(gm, weight.target)[0, 0] = 8
    with pytest.raises(VerificationError, match=r"marked 4-bit \(\[-8, 7\]\) but holds torch.int8 values in \[-7, 8\]"):
        verify(gm)


def test_int4_artifact_and_report_are_about_half_of_int8(tmp_path):
    sizes, reports = {}, {}
    for bits in (8, 4):
        cm = compiled(bits)
        cm.save(tmp_path / str(bits))
        sizes[bits] = (tmp_path / str(bits) / "weights.safetensors").stat().st_size
        reports[bits] = cm.report()
    weight_values = 255 * 129 + 129 * 33
    # The report counts int4 constants at 4 bits (ceil per constant), everything else at its dtype.
    assert reports[8].weight_bytes - reports[4].weight_bytes == weight_values - (255 * 129 + 1) // 2 - (129 * 33 + 1) // 2
    assert 0.5 < sizes[4] / sizes[8] < 0.56  # int32 biases and the file header are not halved
    # The file holds the reported bytes plus the same header and qparams for both widths.
    assert abs((sizes[8] - reports[8].weight_bytes) - (sizes[4] - reports[4].weight_bytes)) < 64
    assert reports[4].compression > 1.9 * reports[8].compression


def _corrupt(directory, change):
    path = directory / "weights.safetensors"
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))
    rerecord_digests(directory)


@pytest.mark.parametrize("change, message", [
    (lambda t, k: t.__setitem__(k, t[k][:-1].clone()), "packed 4-bit constant .* is corrupt: expected uint8"),
    (lambda t, k: t.__setitem__(k, t[k].to(torch.int8)), "packed 4-bit constant .* is corrupt: expected uint8"),
    (lambda t, k: t[k].__setitem__(-1, 0xF7), "unused high nibble"),
])
def test_bad_packed_weights_raise_artifact_error(tmp_path, change, message):
    cm = compiled(4)
    key = weight_nodes(cm.graph_module)[0].target
    cm.save(tmp_path)
    _corrupt(tmp_path, lambda t: change(t, key))
    with pytest.raises(ArtifactError, match=message):
        qcompile.load(tmp_path)


def _edit_graph(directory, change):
    path = directory / "graph.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    rerecord_digests(directory)


def _packed_entry(doc):
    return next(e for e in doc["nodes"] if "packed" in e)


def test_unknown_packing_width_is_an_artifact_error(tmp_path):
    compiled(4).save(tmp_path)
    _edit_graph(tmp_path, lambda doc: _packed_entry(doc)["packed"].__setitem__("bits", 3))
    with pytest.raises(ArtifactError, match="packed at 3 bits"):
        qcompile.load(tmp_path)


def test_version_1_artifacts_without_packing_still_load(tmp_path):
    cm = compiled(8)
    cm.save(tmp_path)
    _edit_graph(tmp_path, lambda doc: doc.__setitem__("version", 1))
    assert torch.equal(qcompile.load(tmp_path)(X), cm(X))
