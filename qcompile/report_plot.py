"""cm.report().plot(path): each layer's measured sensitivity and the width choose-bitwidth gave it, as a PNG."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt  # noqa: E402

_COLOURS = {"8": "#4C72B0", "4": "#DD8452", "float": "#55A868"}
_FLOAT_HEIGHT = 10  # where float bars end on the bits axis (32 would flatten the 4/8 difference)


def plot_bit_allocation(alloc: dict, path: Path) -> Path:
    rows = alloc["layers"]
    labels = [r["module"] or r["layer"] for r in rows]
    x = range(len(rows))
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, figsize=(max(8.0, 0.22 * len(rows) + 2), 7), height_ratios=(3, 2), layout="constrained")
    _sensitivity_panel(top, rows, x, alloc["metric"])
    _bits_panel(bottom, rows, x)
    bottom.set_xticks(list(x), labels, rotation=90, fontsize=7)
    budget = alloc["budget"]
    asked = f"budget {budget['avg_bits']} bits/weight" if budget["avg_bits"] else f"budget {budget['bytes']:,} bytes"
    fig.suptitle(f"bit allocation: {alloc['avg_bits']:.2f} bits per weight on average ({asked})\n"
                 f"{sum(r['bytes'] for r in rows):,} weight bytes; the number in each bar is the layer's weight count",
                 fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _sensitivity_panel(ax, rows: list[dict], x, metric: str) -> None:
    for width, marker in (("8", "o"), ("4", "s")):
        values = [max(r["sensitivity"][width], 1e-12) for r in rows]
        ax.plot(list(x), values, marker=marker, linestyle="-", linewidth=0.8, markersize=4,
                color=_COLOURS[width], label=f"{width}-bit weights")
    ax.set_yscale("log")
    ax.set_ylabel(f"sensitivity ({metric}):\noutput change, this layer alone quantized")
    ax.grid(True, which="major", axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)


def _bits_panel(ax, rows: list[dict], x) -> None:
    chosen = [str(r["bits"]) for r in rows]
    heights = [_FLOAT_HEIGHT if c == "float" else int(c) for c in chosen]
    ax.bar(list(x), heights, color=[_COLOURS[c] for c in chosen], width=0.8)
    ax.set_yticks([4, 8, _FLOAT_HEIGHT], ["4", "8", "float"])
    ax.set_ylabel("chosen weight width")
    for i, r in zip(x, rows):  # the big layers decide the budget: say how big each is
        ax.text(i, 0.3, _count(r["params"]), rotation=90, fontsize=6, ha="center", va="bottom", color="white")


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)
