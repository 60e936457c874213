"""MobileNetV2 (real weights) under a weight budget: qcompile's measured, exactly solved bit allocation
against uniform and naive allocations of the same size, side by side in one run.

    .venv/bin/python bench/accuracy/mixed_precision.py [--budget 6] [--plot bits.png]

Accuracy is top-1 agreement with fp32 over the 100 evaluation views (and top-1 on the 20 labelled photos);
size is the report's stored weight bytes against fp32. Every row is compiled for the reference backend.
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings
from datetime import datetime, timezone

import torch
from rich.console import Console
from rich.table import Table

import qcompile
from qcompile.zoo.evaluate import compare, logits, mobilenet_setup

_SIZE = {8: 8, 4: 4, "float": 32}


def _avg_bits(widths: dict[str, int | str], params: dict[str, int]) -> float:
    return sum(params[m] * _SIZE[widths[m]] for m in params) / sum(params.values())


def _first_last_8(modules: list[str]) -> dict[str, int]:
    """The usual hand-made rule: every layer 4-bit but the first and the last."""
    return {m: 8 if i in (0, len(modules) - 1) else 4 for i, m in enumerate(modules)}


def _largest_first(params: dict[str, int], budget: float) -> dict[str, int]:
    """No measurement: narrow the biggest layers to 4 bits until the budget holds."""
    widths = {m: 8 for m in params}
    for m in sorted(params, key=params.get, reverse=True):
        if _avg_bits(widths, params) <= budget:
            break
        widths[m] = 4
    return widths


def _greedy_by_sensitivity(rows: list[dict], budget: float) -> dict[str, int]:
    """The same measurements, allocated greedily: narrow the layer with the least added cost per bit saved."""
    params = {r["module"]: r["params"] for r in rows}
    widths = {m: 8 for m in params}
    ranked = sorted(rows, key=lambda r: (r["sensitivity"]["4"] - r["sensitivity"]["8"]) / (4 * r["params"]))
    for r in ranked:
        if _avg_bits(widths, params) <= budget:
            break
        widths[r["module"]] = 4
    return widths


def _evaluate(name, config, model, example, calibration, x, labels, originals, reference_logits):
    t0 = time.perf_counter()
    cm = qcompile.compile(model, example, calibration=calibration, config=config, progress=False)
    seconds = time.perf_counter() - t0
    result = compare(reference_logits, logits(cm, x), labels, originals)
    report = cm.report()
    widths = {}
    for r in report.rows:
        if r.op in ("conv2d", "linear") or r.note.startswith("weights kept float"):
            widths[r.source.split(" ")[0]] = "float" if r.bits == "float" else int(r.bits)
    return cm, {"name": name, "result": result, "compression": report.compression, "seconds": seconds, "widths": widths}


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=float, default=6.0, help="average bits per weight")
    parser.add_argument("--plot", default=None, help="write the mixed allocation's plot here (PNG)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, example, calibration, x, labels, originals = mobilenet_setup()
    reference_logits = logits(model, x, 20)
    common = (model, example, calibration, x, labels, originals, reference_logits)

    rows = []
    mixed_cm, mixed = _evaluate(f"qcompile mixed (sqnr, MILP), budget {args.budget:g}",
                                qcompile.QuantConfig(bits="mixed", budget=args.budget), *common)
    alloc = mixed_cm.report().bit_allocation["layers"]
    params = {r["module"]: r["params"] for r in alloc}
    modules = list(params)
    rows.append(mixed)
    for metric in ("kl", "hessian"):
        rows.append(_evaluate(f"qcompile mixed ({metric}, MILP), budget {args.budget:g}",
                              qcompile.QuantConfig(bits="mixed", budget=args.budget, sensitivity=metric), *common)[1])
    rows.append(_evaluate(f"qcompile mixed (sqnr, MILP), int only, budget {args.budget:g}",
                          qcompile.QuantConfig(bits="mixed", budget=args.budget, widths=(8, 4)), *common)[1])
    baselines = {
        "greedy by the same sensitivity": _greedy_by_sensitivity(alloc, args.budget),
        "largest layers to 4-bit first": _largest_first(params, args.budget),
        "4-bit, first and last 8-bit": _first_last_8(modules),
    }
    for name, widths in baselines.items():
        rows.append(_evaluate(name, qcompile.QuantConfig(layer_bits=widths), *common)[1])
    rows.append(_evaluate("uniform 8-bit", qcompile.QuantConfig(bits=8), *common)[1])
    rows.append(_evaluate("uniform 4-bit", qcompile.QuantConfig(bits=4), *common)[1])

    table = Table(title=f"MobileNetV2 weight budgets ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
                        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    for col in ("allocation", "avg weight bits", "agreement (100 views)", "top-1 (20 photos)", "smaller than fp32", "compile s"):
        table.add_column(col)
    for r in rows:
        res = r["result"]
        table.add_row(r["name"], f"{_avg_bits(r['widths'], params):.2f}", f"{res.agreement:.2f}",
                      f"{res.top1_quant:.2f}", f"{r['compression']:.2f}x", f"{r['seconds']:.0f}")
    console = Console(width=160)
    console.print(table)
    console.print(f"fp32 top-1 on the 20 photos: {rows[0]['result'].top1_float:.2f}")
    if args.plot:
        console.print(f"wrote {mixed_cm.report().plot(args.plot)}")


if __name__ == "__main__":
    main()
