"""MiniLM (all-MiniLM-L6-v2) with weight-only and dynamic int8 Linear layers: how close the sentence
embeddings stay to fp32, and what that does to a downstream task.

For fp32, qcompile w8 (per channel), w4 group-wise (32/64/128) and per channel, each rounded to nearest
(min-max scales) and with GPTQ (weight_method="gptq", 256 other sentences as calibration data), qcompile
dynamic int8 and PyTorch's torch.ao.quantization.quantize_dynamic int8, on 4000 movie-review sentences (VADER's
hutto_ICWSM_2014 ground truth, label positive = mean rating > 0): the mean cosine similarity of the
embeddings to fp32, and the accuracy of a logistic regression trained on 3000 sentences' embeddings and
tested on the other 1000 (fixed seed). qcompile runs on the reference backend (the executable semantics).

The sentences come from the source archive of vadersentiment==3.3.2, fetched once with pip into
.cache/ (git-ignored). Run: HF_HUB_OFFLINE=1 python bench/accuracy/minilm_weight_only.py [--sentences 4000]
"""
from __future__ import annotations

import argparse
import copy
import io
import os
import random
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import qcompile  # noqa: E402
from qcompile.zoo.minilm import load_minilm  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "vadersentiment"
SENTENCES = CACHE / "movieReviewSnippets_GroundTruth.txt"
SDIST = "vadersentiment==3.3.2"
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
SEED = 0
TRAIN, TEST = 3000, 1000
CALIBRATION = 256  # sentences after the evaluated ones, for GPTQ
BATCH = 32
MIXED_BUDGET = 5.0  # average bits per Linear weight: int4 but where choose-bitwidth measures sensitivity


def fetch_sentences() -> Path:
    """The movie-review ground truth, extracted from the vadersentiment sdist (downloaded once)."""
    if SENTENCES.is_file():
        return SENTENCES
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    SDIST, "-d", str(CACHE)], check=True)
    sdist = next(CACHE.glob("[vV]ader[sS]entiment-3.3.2.tar.gz"))
    with tarfile.open(sdist) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith(INNER_ARCHIVE))
        inner_bytes = outer.extractfile(inner_member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        member = next(m for m in inner.getmembers() if m.name.endswith(SENTENCES.name))
        SENTENCES.write_bytes(inner.extractfile(member).read())
    return SENTENCES


def load_sentences(n: int) -> tuple[list[str], list[int]]:
    """n sentences in a fixed random order: (text, 1 if the mean rating is positive else 0); the next
    CALIBRATION ones are load_sentences(n + CALIBRATION)[0][n:]."""
    rows = []
    for line in fetch_sentences().read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((parts[2].strip(), int(float(parts[1]) > 0)))
    random.Random(SEED).shuffle(rows)
    rows = rows[:n]
    return [t for t, _ in rows], [y for _, y in rows]


def batches(tok, texts: list[str]) -> tuple[list[tuple], list[int]]:
    """Batches of similar-length sentences (little padding) and the permutation that restores the order."""
    order = sorted(range(len(texts)), key=lambda i: len(tok.tokenize(texts[i])))
    out = []
    for s in range(0, len(order), BATCH):
        b = tok([texts[i] for i in order[s:s + BATCH]], padding=True, truncation=True, max_length=128, return_tensors="pt")
        out.append((b["input_ids"], b["attention_mask"]))
    return out, order


def embed(model, data: tuple[list[tuple], list[int]]) -> torch.Tensor:
    bs, order = data
    with torch.no_grad():
        sorted_emb = torch.cat([model(*b) for b in bs])
    emb = torch.empty_like(sorted_emb)
    emb[torch.tensor(order)] = sorted_emb
    return emb


def sentiment_accuracy(emb: torch.Tensor, labels: list[int]) -> float:
    from sklearn.linear_model import LogisticRegression

    x, y = emb.numpy(), labels
    clf = LogisticRegression(max_iter=5000, random_state=SEED).fit(x[:TRAIN], y[:TRAIN])
    return float(clf.score(x[TRAIN:TRAIN + TEST], y[TRAIN:TRAIN + TEST]))


def qcompile_model(model, example, config: qcompile.QuantConfig, calibration: list[tuple]):
    dims = {0: torch.export.Dim("batch", min=1, max=BATCH), 1: torch.export.Dim("length", min=2, max=128)}
    cm = qcompile.compile(model, example, config=config, dynamic_shapes={"ids": dims, "mask": dims},
                          calibration=calibration if config.weight_method == "gptq" else None, progress=False)
    linear_bytes = sum(r.weight_bytes for r in cm.report().rows)
    return cm, linear_bytes


def w4(group_size: int | None, method: str) -> qcompile.QuantConfig:
    return qcompile.QuantConfig(bits=4, activations="float", group_size=group_size, weight_method=method)


def systems(model, example, calibration):
    """(name, build) with build() -> (callable, bytes of the Linear weights as stored, or None where not
    measured); the issue's must-show rows (GPTQ group-wise, the dynamic int8 peers) first."""
    encoder = model.m.encoder  # the pooler's Linear is not part of the embedding
    compiled = lambda config: lambda: qcompile_model(model, example, config, calibration)  # noqa: E731
    yield "fp32", lambda: (model, sum(m.weight.numel() * 4 for m in encoder.modules() if isinstance(m, nn.Linear)))
    groups = (128, 64, 32, None)
    for g in groups:
        yield f"qcompile w4 g{g} GPTQ", compiled(w4(g, "gptq"))
    mixed = qcompile.QuantConfig(bits="mixed", budget=MIXED_BUDGET, activations="float", group_size=128, weight_method="gptq")
    yield f"qcompile mixed w4/w8 g128 GPTQ {MIXED_BUDGET:g}b", compiled(mixed)
    yield "qcompile dynamic int8", compiled(qcompile.QuantConfig(activations="dynamic"))
    yield "torch quantize_dynamic int8", lambda: (
        torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8), None)
    for g in groups:
        yield f"qcompile w4 g{g} RTN", compiled(w4(g, "minmax"))
    yield "qcompile w8 (per channel)", compiled(qcompile.QuantConfig.from_bits("w8"))


def _selected(rows, only: list[str] | None):
    """fp32 (the reference every row is compared with) and the systems asked for."""
    for i, (name, build) in enumerate(rows):
        if i == 0 or only is None or any(o in name for o in only):
            yield (name, *build())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sentences", type=int, default=TRAIN + TEST, help="how many to embed (>= 4000 for the task)")
    ap.add_argument("--only", nargs="*", default=None, help="run only the systems whose names contain one of these")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    model, tok = load_minilm()
    texts, labels = load_sentences(args.sentences + CALIBRATION)
    calibration = batches(tok, texts[args.sentences:])[0]
    texts, labels = texts[:args.sentences], labels[:args.sentences]
    data = batches(tok, texts)
    example = data[0][len(data[0]) // 2]
    rows, ref = [], None
    for name, fn, nbytes in _selected(systems(model, example, calibration), args.only):
        t0 = time.perf_counter()
        emb = embed(fn, data)
        secs = time.perf_counter() - t0
        ref = emb if ref is None else ref
        cos = float(torch.nn.functional.cosine_similarity(emb, ref).mean())
        acc = sentiment_accuracy(emb, labels) if len(texts) >= TRAIN + TEST else float("nan")
        name = name.replace("gNone", "per-channel")
        rows.append((name, cos, acc, nbytes, secs))
        print(f"{name:30s} cos {cos:.4f}  acc {acc:.3f}", file=sys.stderr, flush=True)
    print(f"\nall-MiniLM-L6-v2, {len(texts)} movie-review sentences ({TRAIN} train / {TEST} test), seed {SEED}")
    print(f"{'system':30s} {'mean cos to fp32':>17s} {'sentiment acc':>14s} {'Linear weights MB':>18s} {'embed s':>8s}")
    for name, cos, acc, nbytes, secs in rows:
        mb = "" if nbytes is None else f"{nbytes / 1e6:.2f}"
        print(f"{name:30s} {cos:17.4f} {acc:14.3f} {mb:>18s} {secs:8.1f}")
    print("(Linear weights MB: int4 counted packed two per byte, group scales included; embed s: this machine, "
          "not a speed comparison)")


if __name__ == "__main__":
    main()
