"""Register tiles of the CPU GEMM kernels (gemm_kernel.py, matmul_kernel.py) and the small cost model that
chooses one per GEMM shape: padding rows and columns, loads per dot product, accumulator latency, the
epilogue and the split over threads. tuning.py measures the model's ranked candidates instead."""
from __future__ import annotations

import dataclasses
import itertools
import os
from dataclasses import dataclass

from .isa import Isa

__all__ = ["Tiling", "STACK_BYTES", "ceil_div", "check_tiling", "tile_cycles", "candidate_tiles", "preference",
           "choose_tiling", "ranked_tilings"]


@dataclass(frozen=True)
class Tiling:
    """Register tile of mr rows x nr columns; a row block visits `panels` weight panels in turn
    (rounded down to a divisor of the panel count)."""

    mr: int
    nr: int
    panels: int = 8


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# TVM 0.27 places a constant-size buffer of at most this many bytes on the stack (an alloca that LLVM
# promotes to registers); a larger one becomes a TVMBackendAllocWorkspace call per tile.
STACK_BYTES = 1024


def check_tiling(isa: Isa, tiling: Tiling) -> None:
    if tiling.mr < 1 or tiling.nr < isa.lanes or tiling.nr % isa.lanes:
        raise ValueError(f"nr={tiling.nr} must be a multiple of {isa.lanes} lanes")
    if tiling.mr % isa.rows:
        raise ValueError(f"mr={tiling.mr} must be a multiple of the {isa.rows} rows one {isa.name} dot product reads")
    # Accumulators + one broadcast A word + one weight vector (the others can be memory operands).
    if tiling.mr * (tiling.nr // isa.lanes) + 2 > isa.registers:
        raise ValueError(f"tile {tiling.mr}x{tiling.nr} needs more than {isa.registers} vector registers")
    if tiling.mr * tiling.nr * 4 > STACK_BYTES:
        raise ValueError(f"tile {tiling.mr}x{tiling.nr} has more than {STACK_BYTES} bytes of accumulators")


# ---------------------------------------------------------------- tile choice (a small cost model)
_EPILOGUE_CYCLES = 4  # requantize + store of one accumulator vector
_TILE_CYCLES = 10  # per-tile loop and bias set-up
_L2_PANEL_BYTES = 256 << 10  # weight bytes a panel group may occupy in L2 (Zen 3 has 512 KiB per core)


def tile_cycles(isa: Isa, mr: int, nr: int, m: int, n: int, k: int, threads: int) -> float:
    """Cycles one thread spends on its share of the tiles (padding included).

    Per k-group the tile issues mr * nr/L dot products and mr/R + nr*R/L loads (A operands and weight
    vectors; R = isa.rows, 1 except smmla's 2); dot products issue at about two per cycle on Zen 3 and recent Intel cores, loads at
    about 1.5 (measured: 16x16 VNNI tiles, 17 loads per 16 dot products, ran slower than 8x32), and
    each accumulator waits for its previous update."""
    nv = nr // isa.lanes
    step = max(mr * nv / 2, (mr // isa.rows + nv * isa.rows) / 1.5, isa.latency)
    tile = ceil_div(k, isa.group) * step + _EPILOGUE_CYCLES * mr * nv + _TILE_CYCLES
    return ceil_div(ceil_div(m, mr) * ceil_div(n, nr), threads) * tile


def candidate_tiles(isa: Isa):
    # At most registers - 4 accumulators: more made LLVM spill in the K loop. At most 3 weight vectors
    # per k-group: wider tiles (2x128, 1x256, 3x32, ...) measured slower than the model says.
    # The accumulators, a k-group's nv * rows weight vectors (each reused by every A operand: on AArch64,
    # without memory operands, LLVM keeps them all in registers) and the A operand's registers must fit;
    # that binds on AArch64 (smmla: 14x8 tiles spilled; sdot: see Isa.a_registers), not on x86.
    for nv in range(1, 4):
        for mr in range(isa.rows, (isa.registers - 4) // nv + 1, isa.rows):
            tiling = Tiling(mr, nv * isa.lanes)
            if mr * tiling.nr * 4 <= STACK_BYTES and mr * nv + nv * isa.rows + isa.a_registers <= isa.registers:
                yield tiling


def _panels_per_job(isa: Isa, tiling: Tiling, m: int, n: int, k: int, threads: int) -> int:
    """Panels a row block visits in turn: as many as fit the L2 budget (at most 8), but few enough to
    leave at least four jobs per thread (a short M is parallelised over N)."""
    panels, row_blocks = ceil_div(n, tiling.nr), ceil_div(m, tiling.mr)
    panel_bytes = tiling.nr * isa.rows * ceil_div(k, isa.group) * 4  # isa.rows words per column and k-group
    fits = [d for d in range(1, min(panels, 8) + 1)
            if panels % d == 0 and d * panel_bytes <= _L2_PANEL_BYTES and row_blocks * panels // d >= 4 * threads]
    return max(fits, default=1)


def preference(isa: Isa, t: Tiling) -> tuple:
    nv = t.nr // isa.lanes
    return t.mr * nv, -(t.mr // isa.rows + 2 * nv * isa.rows), t.mr


def choose_tiling(isa: Isa, m: int | None = None, n: int | None = None, k: int | None = None,
                  threads: int | None = None) -> Tiling:
    """The register tile for an M x K x N GEMM on `threads` threads (unknown sizes taken as large, all the
    host's cores by default). Of the candidate tiles within 5% of the fewest modelled cycles (the model is rough), the one with
    the most accumulators, then the fewest loads per k-group counting a weight vector (streamed from L2)
    as two broadcasts (A rows stay in L1), then the tallest. Measured: 6x16 beat 4x24 and 8x32 beat
    16x16 and 5x48."""
    m, n, k, threads = m or 4096, n or 4096, k or 4096, threads or os.cpu_count() or 1
    # A tile taller than M only recomputes the last row.
    cycles = {t: tile_cycles(isa, t.mr, t.nr, m, n, k, threads) for t in candidate_tiles(isa) if t.mr <= max(m, isa.rows)}
    fastest = min(cycles.values())
    best = max((t for t, c in cycles.items() if c <= 1.05 * fastest), key=lambda t: preference(isa, t))
    return dataclasses.replace(best, panels=_panels_per_job(isa, best, m, n, k, threads))


def ranked_tilings(isa: Isa, m: int, n: int, k: int, count: int, threads: int | None = None) -> list[Tiling]:
    """`count` tiles for an M x K x N GEMM that tuning.py measures, since the model is rough: the model's
    pick (choose_tiling) first, then the best-modelled tile of each width, then the second best of each
    width, ... (tiles of one width often model alike, and the width is what the model misjudges most)."""
    threads = threads or os.cpu_count() or 1
    pick = choose_tiling(isa, m, n, k, threads)
    cycles = {t: tile_cycles(isa, t.mr, t.nr, m, n, k, threads) for t in candidate_tiles(isa)
              if t.mr <= max(m, isa.rows) and (t.mr, t.nr) != (pick.mr, pick.nr)}
    by_width: dict[int, list[Tiling]] = {}
    for t in sorted(cycles, key=lambda t: (cycles[t], tuple(-p for p in preference(isa, t)))):
        by_width.setdefault(t.nr, []).append(t)
    others = [t for rank in itertools.zip_longest(*by_width.values()) for t in rank if t is not None]
    return [pick, *(dataclasses.replace(t, panels=_panels_per_job(isa, t, m, n, k, threads)) for t in others)][:count]
