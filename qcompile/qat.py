"""Quantization-aware training on the fake-quant graph.

prepare_qat() runs the float passes, calibration and insert-qdq, then turns every quantize ->
dequantize pair into PyTorch's fake_quantize op (straight-through gradients) and the float weights and
biases into trainable parameters. After training, convert_qat() puts the q/dq pairs back with the
qparams the model was trained against and finishes the normal pipeline (fuse-qdq, fold-scales).
Activation ranges stay those of calibration (learned ranges, LSQ-style, are future work).
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from .api import CompiledModel, Session
from .backends import get_backend
from .errors import UsageError
from .ir import meta
from .ir.rewrite import Rewriter, constant
from .passes.base import as_passes, check_order, place
from .passes.instruments import Instruments
from .quant.config import QuantConfig
from .quant.qdq import insert_dequantize, insert_quantize, is_quantize, parse_quantize

aten = torch.ops.aten
PREPARE_PIPELINE = "fold-batch-norm,choose-bitwidth,calibrate,insert-qdq"
CONVERT_PIPELINE = "fuse-qdq,fold-scales"
TRAINED_FACTS = frozenset({"qparams", "qdq"})  # what convert_qat's graph holds when its pipeline starts


class QATModel(nn.Module):
    """The trainable fake-quant model: call and train it like the original."""

    def __init__(self, gm: fx.GraphModule, session: Session):
        super().__init__()
        self.gm = gm
        self._session = session

    def train(self, mode: bool = True) -> "QATModel":
        # The captured graph has no mode-dependent ops left (batch-norm is folded, dropout removed), and
        # torch.export's modules refuse train()/eval(): only the flag changes.
        self.training = mode
        return self

    def forward(self, *args, **kwargs):
        flat, _ = pytree.tree_flatten((args, kwargs))
        return pytree.tree_unflatten(list(self.gm(*flat)), self._session.captured.out_spec)


def _fake_quantize(rw: Rewriter, x: fx.Node, q: fx.Node, qp) -> fx.Node:
    s = qp.spec
    if qp.per_channel:
        scale = rw.const(qp.scale, f"{x.name}_fq_scale", q)
        zp = rw.const(qp.zero_point, f"{x.name}_fq_zero_point", q)
        args = (x, scale, zp, s.axis, s.qmin, s.qmax)
        node = rw.call(aten.fake_quantize_per_channel_affine.default, args, q, like=x)
    else:
        scale, zpv = qp.scalar()
        node = rw.call(aten.fake_quantize_per_tensor_affine.default, (x, scale, zpv, s.qmin, s.qmax), q, like=x)
    meta.set_qparams(node, qp)
    return node


def _rebind(gm: fx.GraphModule, name: str, register) -> None:
    """Remove the tensor at dotted `name` and register a replacement with `register(owner, attr, old)`."""
    *path, attr = name.split(".")
    owner = gm.get_submodule(".".join(path)) if path else gm
    old = getattr(owner, attr)
    delattr(owner, attr)
    register(owner, attr, old)


def _make_trainable(gm: fx.GraphModule) -> None:
    """Float constants that feed computation (weights, biases) become parameters."""
    for node in gm.graph.nodes:
        if node.op != "get_attr" or any(u.target in _FAKE_QUANT and u.args[0] is not node for u in node.users):
            continue
        t = constant(gm, node)
        if t.is_floating_point() and not isinstance(t, nn.Parameter):
            _rebind(gm, node.target, lambda o, a, old: o.register_parameter(a, nn.Parameter(old.detach().clone())))


_FAKE_QUANT = {aten.fake_quantize_per_tensor_affine.default, aten.fake_quantize_per_channel_affine.default}


def prepare_qat(model: nn.Module, example_inputs, calibration, *, config: QuantConfig | None = None,
                progress: bool = True) -> QATModel:
    config = config or QuantConfig()
    if config.activations != "static":
        # Group-wise and run-time fake quantization have no straight-through-gradient form here yet.
        raise UsageError(f"quantization-aware training needs activations='static', got {config.activations!r}")
    session = Session.start(model, example_inputs, calibration, config)
    gm = session.run(session.captured.gm, as_passes(PREPARE_PIPELINE), Instruments(), progress)
    rw = Rewriter(gm, "prepare-qat")
    for q in [n for n in gm.graph.nodes if is_quantize(n)]:
        parsed = parse_quantize(gm, q)
        qp = meta.qparams(parsed.input) or parsed.qparams  # calibrate's QParams keep the full QSpec
        for dq in list(q.users):
            dq.replace_all_uses_with(_fake_quantize(rw, parsed.input, q, qp))
    gm = rw.finish()
    _make_trainable(gm)
    return QATModel(gm, session).train()


def convert_qat(qat: QATModel, target="reference", passes=(), dump_dir=None, *, verify_each: bool = False) -> CompiledModel:
    """The trained model as a CompiledModel, quantized with the qparams it was trained against."""
    session = qat._session
    gm = _detached_copy(qat.gm)
    rw = Rewriter(gm, "convert-qat")
    for fq in [n for n in gm.graph.nodes if n.target in _FAKE_QUANT]:
        # The network was trained against these exact qparams (weights included): keep them.
        x, qp = fq.args[0], meta.qparams(fq)
        q = insert_quantize(rw, x, qp, fq)
        fq.replace_all_uses_with(insert_dequantize(rw, q, qp, fq))
    gm = rw.finish()
    instruments = Instruments.from_env(dump_dir=dump_dir, verify_each=verify_each)
    pipeline = place(as_passes(CONVERT_PIPELINE), passes)
    check_order(pipeline, TRAINED_FACTS)
    gm = session.run(gm, pipeline, instruments)
    return session.finish(gm, get_backend(target), instruments)


def _detached_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A deep copy whose parameters are plain buffers again (the integer graph is not trained)."""
    with torch.no_grad():
        out = copy.deepcopy(gm)
    for name, _ in list(out.named_parameters()):
        _rebind(out, name, lambda o, a, old: o.register_buffer(a, old.detach().clone()))
    return out
