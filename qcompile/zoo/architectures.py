"""Architectures nobody here wrote, at small sizes (random init, seconds each): transformers architectures built
from their configs and plain torch modules. Each entry builds (model, make_inputs, kind); kind "vision"
models classify (top-1 agreement is their measure), the rest are compared by cosine similarity."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ZooModel:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple]
    kind: str = "features"  # or "vision": logits, compared by top-1 agreement


def _ids(seq: int = 16, vocab: int = 100):
    return lambda g: (torch.randint(0, vocab, (1, seq), generator=g),)


def _image(size: int = 32):
    return lambda g: (torch.randn(1, 3, size, size, generator=g),)


def _transformers():
    import transformers as tf  # noqa: PLC0415  (only when the zoo is built)

    return tf


def _text_models() -> list[ZooModel]:
    tf = _transformers()
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return [
        ZooModel("bert", lambda: tf.BertModel(tf.BertConfig(vocab_size=100, max_position_embeddings=64, **small)), _ids()),
        ZooModel("distilbert", lambda: tf.DistilBertModel(tf.DistilBertConfig(
            vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=64)), _ids()),
        ZooModel("gpt2", lambda: tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=100, n_embd=64, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)), _ids()),
        ZooModel("llama", lambda: tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=100, num_key_value_heads=2, **small)), _ids()),
        ZooModel("t5_encoder", lambda: tf.T5EncoderModel(tf.T5Config(
            vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)), _ids()),
        ZooModel("wav2vec2", lambda: tf.Wav2Vec2Model(tf.Wav2Vec2Config(
            conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
            num_conv_pos_embedding_groups=4, **small)), lambda g: (torch.randn(1, 1600, generator=g),)),
    ]


def _vision_models() -> list[ZooModel]:
    tf = _transformers()
    return [
        ZooModel("vit", lambda: tf.ViTForImageClassification(tf.ViTConfig(
            image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, num_labels=10)), _image(), "vision"),
        ZooModel("resnet", lambda: tf.ResNetForImageClassification(tf.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10)), _image(), "vision"),
        ZooModel("convnext", lambda: tf.ConvNextForImageClassification(tf.ConvNextConfig(
            hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=10)), _image(), "vision"),
        ZooModel("mobilevit", lambda: tf.MobileViTForImageClassification(tf.MobileViTConfig(
            image_size=64, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 48, 64, 128], num_labels=10)),
            _image(64), "vision"),
    ]


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(32, 4, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x)[0]


class _Einsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 32) * 0.2)
        self.v = nn.Parameter(torch.randn(8, 32) * 0.2)

    def forward(self, x):
        return torch.einsum("ble,fe->blf", torch.relu(torch.einsum("bld,de->ble", x, self.w)), self.v)


def _torch_models() -> list[ZooModel]:
    seq = lambda g: (torch.randn(1, 8, 16, generator=g),)  # noqa: E731
    return [
        ZooModel("lstm", lambda: nn.LSTM(16, 32, num_layers=2, batch_first=True), seq),
        ZooModel("gru", lambda: nn.GRU(16, 32, batch_first=True), seq),
        ZooModel("multihead_attention", _Attention, lambda g: (torch.randn(1, 8, 32, generator=g),)),
        ZooModel("transformer_encoder_layer", lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
                 lambda g: (torch.randn(1, 8, 32, generator=g),)),
        ZooModel("conv1d_groupnorm", lambda: nn.Sequential(nn.Conv1d(4, 16, 5), nn.GroupNorm(4, 16), nn.GELU(),
                                                           nn.Conv1d(16, 8, 3)), lambda g: (torch.randn(1, 4, 64, generator=g),)),
        ZooModel("conv_transpose2d", lambda: nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 3, 2, 2)),
                 lambda g: (torch.randn(1, 3, 16, 16, generator=g),)),
        ZooModel("einsum", _Einsum, seq),
    ]


def zoo() -> dict[str, ZooModel]:
    return {m.name: m for m in (*_text_models(), *_vision_models(), *_torch_models())}


@dataclass
class Prepared:
    entry: ZooModel
    model: nn.Module  # in eval mode, BatchNorm statistics re-estimated for vision models
    example: tuple
    calibration: list[tuple]
    evaluation: list[tuple]  # inputs neither the example nor the calibration saw


def prepare(name: str, calibration: int = 8, evaluation: int = 4) -> Prepared:
    """The zoo model `name` built (seeded) with its example, calibration and evaluation inputs."""
    entry = zoo()[name]
    torch.manual_seed(0)
    model = entry.build().eval()
    if entry.kind == "vision":
        reestimate_batch_norm(model, entry.inputs)
    g = torch.Generator().manual_seed(0)
    example = entry.inputs(g)
    return Prepared(entry, model, example, [entry.inputs(g) for _ in range(calibration)],
                    [entry.inputs(g) for _ in range(evaluation)])


def reestimate_batch_norm(model: nn.Module, inputs: Callable, batches: int = 8) -> None:
    """Random-init BatchNorm statistics (mean 0, var 1) do not match what the layers see, and the outputs
    of such a network are degenerate; re-estimated on random inputs, as a trained network's would be."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for _ in range(batches):
            model(*(torch.cat([inputs(g)[0] for _ in range(4)]),))
    model.eval()


def output_tensor(out) -> torch.Tensor:
    """The main output: logits or last_hidden_state of transformers' outputs, the first of a tuple."""
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if value is not None:
            return value
    return out[0] if isinstance(out, (tuple, list)) else out
