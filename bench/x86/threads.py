"""Throughput of one compiled x86 model called from 1 and from 2 Python threads at once (each calling thread
runs its own VM of the same library; TVM's thread pool is per calling thread), side by side in one run.

    .venv/bin/python bench/x86/threads.py [--seconds 10]
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import torch

import qcompile
from qcompile.zoo.mobilenet_v2 import mobilenet_v2


def calls_per_second(compiled, x: torch.Tensor, threads: int, seconds: float) -> float:
    counts = [0] * threads
    stop = time.perf_counter() + seconds

    def run(k: int) -> None:
        while time.perf_counter() < stop:
            compiled(x)
            counts[k] += 1

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = mobilenet_v2().eval()
    x = torch.randn(1, 3, 224, 224)
    compiled = qcompile.compile(model, (x,), target="x86", calibration=[x], progress=False)
    compiled(x)  # the first call makes this thread's VM
    print(f"MobileNetV2 x86, batch 1, {os.cpu_count()} CPUs, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}")
    print("| calling threads | calls/s | vs 1 thread |")
    print("|---|---|---|")
    base = None
    for threads in (1, 2, 1, 2):  # interleaved twice: the machine is shared and noisy
        rate = calls_per_second(compiled, x, threads, args.seconds)
        base = base or rate
        print(f"| {threads} | {rate:.1f} | {rate / base:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
