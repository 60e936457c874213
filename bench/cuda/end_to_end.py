"""target="cuda" on the GPU machine, side by side with PyTorch in one run: exactness of every bundled case,
then end-to-end latency against torch fp16, then where the end-to-end cases spend their GPU time.

    here:  .venv/bin/python tools/cuda_bundle.py          # builds .gpu/ (no GPU needed)
    there: python3 bench/cuda/end_to_end.py .gpu --out $OUT          # device tool: carry [".gpu"]

Every number is a median over `--repeat` rounds of `--number` back-to-back calls on the GPU's stream, with
the systems timed in the same process, one after another, on the same inputs. The torch peers of the
models are built there with random weights (the same architecture; time does not depend on the values).
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import cuda_device  # noqa: E402


def _mobilenet_v2_fp16(spec: dict):
    import torchvision

    model = torchvision.models.mobilenet_v2().eval().half().cuda()
    return model, lambda batch: (torch.randn(batch, *spec["input_shape"], device="cuda", dtype=torch.half),)


def _minilm_fp16(spec: dict):
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**spec["config"])).eval().half().cuda()

    def embed(ids, mask):
        h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1)

    def inputs(batch):
        ids = torch.randint(1000, 20000, (batch, 128), device="cuda")
        return ids, torch.ones_like(ids)

    return embed, inputs


PEERS = {"mobilenet_v2": _mobilenet_v2_fp16, "minilm": _minilm_fp16}


def check_cases(rt, cases) -> list[dict]:
    rows = []
    for case in cases:
        problem = cuda_device.mismatch(case, case.model(rt))
        rows.append({"case": case.name, "result": "bit-exact" if problem is None and case.spec.get("compare") == "exact"
                     else "within tolerance" if problem is None else f"MISMATCH: {problem}"})
    return rows


def end_to_end(rt, cases, number: int, repeat: int) -> list[dict]:
    rows = []
    for case in (c for c in cases if c.spec.get("peer") in PEERS):
        model = case.model(rt)
        peer, peer_inputs = PEERS[case.spec["peer"]](case.spec)
        inputs, _ = case.io()
        batch = case.spec["batch"]
        ours = statistics.median(model.time(*inputs, number=number, repeat=repeat))
        args = peer_inputs(batch)
        with torch.inference_mode():
            theirs = cuda_device.cuda_seconds(lambda: peer(*args), number, repeat)
        rows.append({"model": case.spec["peer"], "batch": batch, "qcompile int8 ms": ours * 1e3,
                     "torch fp16 ms": theirs * 1e3, "speed-up": theirs / ours})
    return rows


def kernel_breakdown(rt, cases, top: int = 8) -> list[dict]:
    """The `top` kernels by GPU time of every end-to-end case (CUPTI), with their share of its kernel time:
    where a model's time goes."""
    rows = []
    for case in (c for c in cases if c.spec.get("peer") in PEERS):
        model = case.model(rt)
        inputs, _ = case.io()
        times = cuda_device.kernel_times(lambda: model(*inputs))
        total = sum(times.values())
        for name, seconds in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
            rows.append({"case": case.name, "kernel": name, "µs per call": seconds * 1e6, "share": seconds / total})
    return rows


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    keys = list(rows[0])
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path, nargs="?", default=cuda_device.DEFAULT_BUNDLE)
    ap.add_argument("--out", type=Path, help="write results.md and results.json here")
    ap.add_argument("--number", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    rt = cuda_device.runtime(args.bundle)
    why = rt.missing_gpu()
    if why:
        sys.exit(f"bench/cuda/end_to_end.py runs on a GPU machine, and {why}")
    cases = cuda_device.cases(args.bundle)
    header = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {torch.cuda.get_device_name()}, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    sections = {"checks": check_cases(rt, cases), "end to end": end_to_end(rt, cases, args.number, args.repeat),
                "kernels of the end-to-end cases": kernel_breakdown(rt, cases)}
    report = header + "\n\n" + "".join(f"## {title}\n{_table(rows)}\n" for title, rows in sections.items())
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(report)
        (args.out / "results.json").write_text(json.dumps({"header": header, **sections}, indent=1))


if __name__ == "__main__":
    main()
