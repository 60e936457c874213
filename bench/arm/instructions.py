"""What "arm" (Cortex-A76 class: NEON + sdot) and "arm-a55" (NEON, no dot product) execute for one call of
TinyResNet and MobileNetV2: dynamic aarch64 instruction counts per layer, from the emulated device
(qcompile/backends/tvm/arm/instruction_counts.py). Emulated time means nothing, instructions do.

    .venv/bin/python bench/arm/instructions.py [--models tinyresnet mobilenet_v2]

The two builds may split a layer into different kernels (a55 runs convolutions directly, arm as im2col +
GEMM), so rows are groups of layers: the smallest groups that no kernel of either build crosses.
Counted: instructions inside the model library (kernels and their wrappers), not the TVM runtime or libc.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import qcompile
from qcompile.backends.tvm.arm.instruction_counts import Call, count_artifact

TARGETS = ("arm", "arm-a55")


def tinyresnet():
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.models import TinyResNet

    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    return TinyResNet().eval(), (x,), [x, torch.randn(1, 3, 32, 32)]


def mobilenet_v2():
    from qcompile.zoo.evaluate import mobilenet_setup

    model, example, calibration, *_ = mobilenet_setup()
    return model, example, calibration[:8]


MODELS = {"tinyresnet": tinyresnet, "mobilenet_v2": mobilenet_v2}


def layer_groups(builds: list[list[Call]]) -> dict[str, str]:
    """layer -> the first layer of its group: layers computed by one kernel of any build are joined
    (union-find), so that every group's instructions can be compared between builds."""
    parent: dict[str, str] = {}

    def root(layer: str) -> str:
        while parent.setdefault(layer, layer) != layer:
            layer = parent[layer]
        return layer

    for calls in builds:
        for call in calls:
            for layer in call.layers:
                a, b = root(call.layers[0]), root(layer)
                if a != b:
                    parent[b] = a
    return {layer: root(layer) for layer in parent}


def rows(builds: list[list[Call]]) -> dict[str, list[list]]:
    """group label -> per build [instructions, sdot, kernel calls], in the first build's call order."""
    group = layer_groups(builds)
    members: dict[str, list[str]] = {}
    for layer, r in group.items():
        members.setdefault(r, []).append(layer)
    table: dict[str, list[list]] = {}
    for b, calls in enumerate(builds):
        for call in calls:
            r = group[call.layers[0]] if call.layers else None
            label = ", ".join(members[r]) if r else "(no layer: layout/dtype glue)"
            cells = table.setdefault(label, [[0, 0, 0] for _ in builds])
            cells[b][0] += call.instructions
            cells[b][1] += call.sdot
            cells[b][2] += 1
    return table


def compare(name: str, model, example, calibration, work: Path) -> None:
    builds, totals = [], []
    for target in TARGETS:
        t0 = time.perf_counter()
        cm = qcompile.compile(model, example, target=target, calibration=calibration, progress=False)
        directory = cm.save(work / f"{name}-{target}")
        t1 = time.perf_counter()
        counts, calls = count_artifact(directory, list(example))
        print(f"  {target}: compiled in {t1 - t0:.0f} s, counted in {time.perf_counter() - t1:.0f} s "
              f"({len(calls)} kernel calls)", flush=True)
        builds.append(calls)
        totals.append(counts)
    print(f"\n{name}: instructions executed in one call (batch {example[0].shape[0]})")
    head = f"  {'layers':<44} {'kernels':>7} {'arm':>13} {'sdot':>10} {'arm-a55':>13} {'arm/a55':>8}"
    print(head + "\n  " + "-" * (len(head) - 2))
    for label, (arm, a55) in rows(builds).items():
        ratio = f"{arm[0] / a55[0]:.2f}" if a55[0] else "-"
        label = label if len(label) <= 44 else label[:41] + "..."
        print(f"  {label:<44} {f'{arm[2]}/{a55[2]}':>7} {arm[0]:>13,} {arm[1]:>10,} {a55[0]:>13,} {ratio:>8}")
    arm, a55 = (sum(c.instructions for c in calls) for calls in builds)
    print(f"  {'all kernel calls':<44} {'':>7} {arm:>13,} {totals[0].count('sdot'):>10,} {a55:>13,} {arm / a55:>8.2f}")
    rest = [t.total - s for t, s in zip(totals, (arm, a55))]
    print(f"  (library code outside kernel calls, start-up: {rest[0]:,} / {rest[1]:,})\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    qemu = subprocess.run(["qemu-aarch64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, host {platform.node()} ({platform.machine()}), {qemu}, "
          f"plugin tools/insn_count.c; 'kernels' = kernel calls arm/a55, 'sdot' = sdot executed by arm")
    with tempfile.TemporaryDirectory(prefix="qcompile-arm-insn-") as work:
        for name in args.models:
            print(f"{name}:", flush=True)
            compare(name, *MODELS[name](), Path(work))


if __name__ == "__main__":
    main()
