"""MobileNetV2 (real weights), batch 1, 224x224 on target="x86": untuned vs tune=True, side by side.

    .venv/bin/python bench/x86/tuning.py                  # tunes from scratch (fresh records directory)
    .venv/bin/python bench/x86/tuning.py --trials 4       # another budget (schedules per kernel)
    .venv/bin/python bench/x86/tuning.py --cache DIR      # reuse / extend the records in DIR

Prints the tuning time (the tuned compile from empty records), the compile time when the records are
reused, the tuned kernels' own before/after times, and the two models' latency: interleaved rounds, in
each a shuffled order, one untimed warm-up call and --per-round timed calls each; medians of all timed
calls. Both models must give the same bits.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

# TVM's workers spin after each call and would steal the cores from the other model's next call.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "2000")

import torch  # noqa: E402

import qcompile  # noqa: E402
from qcompile.zoo.evaluate import mobilenet_setup  # noqa: E402


def compile_timed(model, example, calibration, **options):
    start = time.perf_counter()
    cm = qcompile.compile(model, example, target="x86", calibration=calibration, progress=False, **options)
    return cm, time.perf_counter() - start


def latencies(models: dict, x: torch.Tensor, rounds: int, per_round: int) -> dict[str, float]:
    """Median ms per call of each model, over interleaved rounds."""
    samples = {name: [] for name in models}
    for _ in range(rounds):
        order = list(models)
        random.shuffle(order)
        for name in order:
            models[name](x)
            for _ in range(per_round):
                start = time.perf_counter()
                models[name](x)
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(s) for name, s in samples.items()}


def kernel_gains(records_file: str) -> str:
    records = json.loads(Path(records_file).read_text())["records"].values()
    timed = [r for r in records if r["us"] is not None]
    changed = [r for r in timed if r["us"] < r["default_us"]]
    before = sum(r["default_us"] for r in timed) / 1e3
    after = sum(r["us"] for r in timed) / 1e3
    kinds = {k: sum(r["kind"] == k for r in changed) for k in ("gemm", "fused")}
    return (f"{len(records)} distinct kernels, {len(timed)} timed, {len(changed)} given a non-default schedule "
            f"({kinds['gemm']} GEMM tiles, {kinds['fused']} fused-kernel knobs); sum of their times alone "
            f"{before:.2f} ms -> {after:.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=None, help="tune_trials (default: the backend's)")
    ap.add_argument("--cache", default=None, help="records directory (default: a fresh temporary one)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--per-round", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    model, example, calibration, views, *_ = mobilenet_setup()
    calibration = calibration[:8]
    cache = args.cache or tempfile.mkdtemp(prefix="qcompile-tuning-")
    tune = dict(tune=True, tune_cache=cache, tune_trials=args.trials)

    untuned, untuned_s = compile_timed(model, example, calibration)
    tuned, tuned_s = compile_timed(model, example, calibration, **tune)
    summary = tuned.report().extra["tuning"]
    _, reused_s = compile_timed(model, example, calibration, **tune)
    print(f"compile untuned {untuned_s:.1f} s; tuned {tuned_s:.1f} s ({summary['tuned']} kernels tuned in "
          f"{summary['seconds']:.1f} s, {summary['reused']} reused); tuned again from the records {reused_s:.1f} s")
    print(f"records: {summary['records']}")
    print(kernel_gains(summary["records"]))

    probe = views[:4]
    for i in range(len(probe)):
        assert torch.equal(tuned(probe[i:i + 1]), untuned(probe[i:i + 1])), "tuned and untuned outputs differ"
    ms = latencies({"untuned": untuned, "tuned": tuned}, example[0], args.rounds, args.per_round)
    print(f"MobileNetV2 batch 1, {os.cpu_count()} threads, median of {args.rounds * args.per_round} calls each: "
          f"untuned {ms['untuned']:.2f} ms, tuned {ms['tuned']:.2f} ms ({ms['untuned'] / ms['tuned']:.2f}x)")


if __name__ == "__main__":
    main()
