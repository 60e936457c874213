"""The architecture zoo (qcompile/zoo/architectures.py: small random-init configs) on x86 against eager
PyTorch fp32, side by side: interleaved rounds in one process, each system warmed up before its timed calls.

    .venv/bin/python bench/x86/zoo.py [--rounds 5] [--calls 20] [--models bert,gpt2]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import time
import warnings

import torch

import qcompile
from qcompile.zoo.architectures import prepare, zoo

WARMUP_MS = 50.0  # the previous system's spinning thread pool must not steal the cores from the next


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _timed(fn, calls: int) -> list[float]:
    t0 = time.perf_counter()
    fn()
    while (time.perf_counter() - t0) * 1e3 < WARMUP_MS:
        fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def measure(name: str, rounds: int, calls: int) -> tuple[float, float, bool]:
    p = prepare(name, evaluation=0)
    model, example, calibration = p.model, p.example, p.calibration
    x86 = qcompile.compile(model, example, calibration=calibration, progress=False, target="x86")
    systems = {"eager": lambda: model(*example), "x86": lambda: x86(*example)}
    times: dict[str, list[float]] = {k: [] for k in systems}
    rng = random.Random(0)
    with torch.no_grad():
        for _ in range(rounds):
            order = list(systems)
            rng.shuffle(order)
            for k in order:
                times[k] += _timed(systems[k], calls)
    islands = bool(qcompile.compile(model, example, calibration=calibration, progress=False).report().float_layers)
    return statistics.median(times["eager"]), statistics.median(times["x86"]), islands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--models", default="")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    names = args.models.split(",") if args.models else list(zoo())
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {_cpu()}, {os.cpu_count()} threads, "
          f"torch {torch.__version__}; batch 1, median ms of {args.rounds} interleaved rounds x {args.calls} calls")
    print("| model | eager fp32 ms | qcompile x86 ms | x86 speed-up | float islands |")
    print("|---|---|---|---|---|")
    for name in names:
        eager, x86, islands = measure(name, args.rounds, args.calls)
        print(f"| {name} | {eager:.2f} | {x86:.2f} | {eager / x86:.2f}x | {'yes' if islands else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
