"""Where the x86 backend's time goes on MobileNetV2: the report's per-kernel profile, summed by kind.

    .venv/bin/python bench/x86/kernels.py

The numbers are cm.report()'s (qcompile/backends/tvm/profile.py): every kernel call of one real run,
median of several runs; this script only groups them and times the compile.
"""
from __future__ import annotations

import collections
import datetime
import time
import warnings

import torch

import qcompile
from qcompile.zoo.evaluate import mobilenet_setup

_KINDS = (("gemm", "pointwise conv / linear (GEMM kernel)"), ("transpose", "layout transposes"),
          ("reshape", "layout transposes"), ("conv", "3x3 depthwise + stem conv"), ("add", "residual add"))


def kind_of(name: str) -> str:
    return next((label for key, label in _KINDS if key in name), name)


def main() -> None:
    warnings.filterwarnings("ignore")
    model, example, calibration, *_ = mobilenet_setup()
    t0 = time.perf_counter()
    cm = qcompile.compile(model, example, target="x86", calibration=calibration[:8], progress=False)
    compiled = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = cm.report()
    profiled = time.perf_counter() - t0
    totals = collections.defaultdict(float)
    for k in report.kernels:
        totals[kind_of(k["kernel"])] += k["us"] / 1e3
    print(f"{datetime.date.today()}: compile {compiled:.1f} s, profile {profiled:.1f} s")
    total = sum(totals.values())
    for kind, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<45} {ms:7.2f} ms  {100 * ms / total:5.1f}%")
    print(f"  {'sum of kernels':<45} {total:7.2f} ms")
    print(report)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
