"""A hand-written CPU schedule for the fused integer kernels (good without tuning; tuning.py may pick
other knobs per kernel).

Per fused function: producers of the main reduction (the zero-point padding) are inlined into its loads,
injective epilogue blocks (bias, requantize, residual add) collapse into one
block computed right behind each output tile of the reduction, the reduction is tiled so a small
(channels x width) tile of int32 accumulators stays in registers with the width loop vectorized, and
the outer spatial loops run in parallel over the cores (unless the kernel is small: parallelism.py). Functions without a reduction are parallelised
and vectorized as element-wise loops.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.s_tir import dlight

from .parallelism import elementwise_is_small, reduction_is_small


@dataclass(frozen=True)
class Knobs:
    """The rule's free choices. The defaults are the untuned schedule; tuning.py searches around them."""

    vector: int = 16  # most int32 lanes per tile row (a divisor of the width): two AVX2 registers, one AVX-512
    channels: int = 4  # most output channels per register tile (a divisor of the channel count)
    inline_pad: bool = True  # zero-point padding recomputed in the reduction's loads, not materialised

    def __post_init__(self):
        if self.vector < 1 or self.channels < 1:
            raise ValueError(f"vector and channels must be positive, got {self}")


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _divisor(n: int | None, limit: int) -> int:
    if n is None:
        return 1
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _parallel_vectorize(sch: s_tir.Schedule, block, max_vector: int) -> None:
    """Element-wise block: vectorize the innermost loop when it divides well, parallelise the outer ones."""
    loops = sch.get_loops(block)
    if not loops:
        return
    serial = elementwise_is_small([_extent(sch, lp) for lp in loops])
    inner = loops[-1]
    touches_bool = any(str(r.source.dtype) == "bool" for r in [*sch.get(block).reads, *sch.get(block).writes])
    v = 1 if touches_bool else _divisor(_extent(sch, inner), max_vector)  # LLVM codegen rejects bool vectors
    if v > 1:
        outer, vec = sch.split(inner, factors=[None, v])
        sch.vectorize(vec)
        loops = [*loops[:-1], outer]
    if not serial:
        sch.parallel(sch.fuse(*loops[: max(1, len(loops) - 1)]) if len(loops) > 1 else loops[0])


def _inline_or_parallelize(sch: s_tir.Schedule, block, knobs: Knobs) -> None:
    """A producer of the reduction (the zero-point padding) is usually cheaper recomputed in the reduction's
    loads (a select on a loop-invariant condition) than written to and re-read from an extra padded
    buffer; for some shapes the select in the hot loop costs more (knobs.inline_pad=False)."""
    if knobs.inline_pad:
        try:
            sch.compute_inline(block)
            return
        except s_tir.ScheduleError:
            pass
    _parallel_vectorize(sch, block, knobs.vector)


def _schedule_reduction(sch: s_tir.Schedule, red, epilogue, knobs: Knobs) -> None:
    loops = sch.get_loops(red)
    kinds = [iv.iter_type for iv in sch.get(red).iter_vars]
    spatial = [lp for lp, k in zip(loops, kinds) if k == tirx.IterVar.DataPar]
    reduce = [lp for lp, k in zip(loops, kinds) if k == tirx.IterVar.CommReduce]
    if len(spatial) < 2 or not reduce:
        return
    *outer, chan, width = spatial
    serial = reduction_is_small([_extent(sch, lp) for lp in loops])
    w = _divisor(_extent(sch, width), knobs.vector)
    c = _divisor(_extent(sch, chan), knobs.channels)
    wo, wi = sch.split(width, factors=[None, w])
    co, ci = sch.split(chan, factors=[None, c])
    sch.reorder(*outer, co, wo, *reduce, ci, wi)
    par = sch.fuse(*outer, co) if outer else co
    if not serial:
        sch.parallel(par)
    sch.vectorize(wi)  # before decompose_reduction: afterwards the update block has no init and cannot be checked
    sch.decompose_reduction(red, reduce[0])
    if epilogue is None:
        return
    try:
        sch.reverse_compute_at(epilogue, wo)
    except s_tir.ScheduleError:
        # With symbolic extents TVM cannot always prove the tile's producers cover the epilogue's
        # reads; the epilogue then runs as its own element-wise pass over the accumulator.
        _parallel_vectorize(sch, epilogue, knobs.vector)
        return
    sch.vectorize(sch.get_loops(epilogue)[-1])


def _inline_producers(sch: s_tir.Schedule, infos: list) -> list:
    """Element-wise producers (transposes, casts) inlined into the loads of the blocks that read them, so
    that a chain such as transpose -> transpose -> pack_b (matmul_kernel.py) is one pass over the data
    instead of materialising every intermediate; the blocks that could not be inlined remain."""
    kept = []
    for info in infos[:-1]:
        try:
            sch.compute_inline(info.block_rv)
        except s_tir.ScheduleError:
            kept.append(info)
    return [*kept, infos[-1]]


class FusedIntegerKernel(dlight.ScheduleRule):
    def __init__(self, knobs: Knobs = Knobs()):
        self.knobs = knobs

    def knobs_for(self, func: tirx.PrimFunc) -> Knobs:
        """The knobs for one kernel: the same for all here; a tuned rule (tuning.py) looks them up."""
        return self.knobs

    def apply(self, func, target, tunable):  # noqa: D102 - dlight's interface
        if not isinstance(func, tirx.PrimFunc):
            return None
        try:
            return self._schedule(s_tir.Schedule(func), self.knobs_for(func))
        except s_tir.ScheduleError:
            return None  # a shape this rule does not handle keeps TVM's default (correct, slower) loops

    def _schedule(self, sch: s_tir.Schedule, knobs: Knobs):
        infos = dlight.normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [i for i in infos if i.is_reduction()]
        if len(reductions) != 1:
            if not reductions:
                infos = _inline_producers(sch, infos)
            for info in infos:
                if info.is_injective():
                    _parallel_vectorize(sch, info.block_rv, knobs.vector)
            return sch
        red = reductions[0]
        names = [i.name for i in infos]
        after = infos[names.index(red.name) + 1:]
        # Collapse the epilogue chain into its last block, which then reads the accumulator directly.
        for info in after[:-1]:
            sch.compute_inline(info.block_rv)
        epilogue = after[-1].block_rv if after else None
        for info in infos[: names.index(red.name)]:
            _inline_or_parallelize(sch, info.block_rv, knobs)
        _schedule_reduction(sch, red.block_rv, epilogue, knobs)
        return sch
