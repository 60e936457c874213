"""The int8 GEMM of every fused linear and ungrouped conv on NVIDIA tensor cores: a dlight schedule rule.

It schedules the kernels FuseOps made from the TE definitions (ops.py linear_int, ops_nhwc.py conv2d_nhwc)
together with their epilogue blocks (bias, requantize, residual add_fixed, clamps), so the arithmetic is
the one the bit-exact x86 backend compiles, and every step below is a TVM schedule primitive that TVM
checks.

1. Normalize: the reduction block becomes C[1, M, N] += A[1, M, K] * B[1, N, K] (reindex + layout
   transforms; for a conv M = batch * OH * OW output pixels, K = KH * KW * Cin, read from the NHWC input
   through the (inlined) padding: an implicit GEMM, no im2col buffer).
2. Pad M, N, K to whole block tiles (pad_einsum): padded A/B elements read as 0, padded rows and columns
   are never stored. M may be a free (dynamic) size.
3. Tile: a BM x BN block tile, WM x WN warps each owning a (BM/WM) x (BN/WN) warp tile made of 16 x 16
   accumulator tiles; a BK-byte K step staged in shared memory (global -> shared with cp.async, 16
   bytes per thread and copy, `stages` deep software pipeline), operands loaded to registers with
   ldmatrix.x4 and multiplied with mma.sync m16n8k32 u8/s8 -> s32 (mma_intrin.py). The shared rows are
   padded by 16 bytes so that the 8 rows one ldmatrix phase reads fall in distinct banks.
4. Epilogue on the accumulator registers: the accumulator tile is never written to memory; the copy
   out of the fragments, in which the bias, requantize, residual add and clamps are inlined, stores the
   output directly, each lane storing the (row, column) pairs its fragment holds.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumer_chain,
    get_index_map,
    get_reduction_blocks,
)
from tvm.s_tir.tensor_intrin.cuda import MMA_fill_16x16_i32_INTRIN
from tvm.target import Target

from . import mma_intrin
from .mma_intrin import TILE_K, TILE_M, TILE_N, WARP

SHARED = "shared.dyn"  # dynamic shared memory: TVM merges the stages' buffers and lifts the 48 KiB limit
_COPY_BYTES = (16, 4)  # vector widths of a global -> shared copy (16: one cp.async); else bytes one by one
# What the build's PassContext needs for these schedules: the pipelined global -> shared copies become
# cp.async (without it they are synchronous loads and stores).
PASS_CONFIG = {"tirx.use_async_copy": True}


@dataclass(frozen=True)
class GemmTile:
    """A block tile BM x BN, computed by WM x WN warps, with a BK-byte K step and a `stages`-deep pipeline."""

    bm: int
    bn: int
    bk: int
    wm: int
    wn: int
    stages: int

    @property
    def warps(self) -> int:
        return self.wm * self.wn

    @property
    def warp_tiles(self) -> tuple[int, int]:
        """16 x 16 accumulator tiles per warp, along M and N."""
        return self.bm // self.wm // TILE_M, self.bn // self.wn // TILE_N


# Large GEMMs: 128 x 128 x 64 with 4 warps of 64 x 64 (16 accumulator tiles, 128 accumulator registers
# per lane; 254 in all, no spills), 3 stages: (128 + 128) x (64 + 16) bytes x 3 = 60 KiB of shared memory.
# On the H200 at 4096^3 (bench/results/cuda/2026-11-26-h200-2): 526 TOPS, against 477 with 8 warps of 64 x 32
# and 413-441 with 256-wide tiles or 4 stages.
LARGE = GemmTile(bm=128, bn=128, bk=64, wm=2, wn=2, stages=3)
# Few rows or columns (a linear at batch 1..32, a classifier): a 32 x 64 tile, 4 warps of 16 x 32.
SMALL = GemmTile(bm=32, bn=64, bk=64, wm=2, wn=2, stages=2)
# On sm_90 (H100 / H200) the large tile takes K steps of 128 where K is whole steps of it. At 4096^3 on
# the H100: 511-527 TOPS against 489-491 with steps of 64 (bench/results/cuda/2026-11-26-h100-10 and -11), 544-545
# as the default (run 12); on the H200 507-558 against 544-547 (runs 2-9). (128 + 128) x (128 + 16) bytes x 3 stages = 108 KiB of
# shared memory: more than a block may have on sm_86 / sm_89, and not measured on sm_80. Only for K of
# at least DEEP_K_MIN: with fewer steps the pipeline is not filled (K = 256: 2 steps for 3 stages).
DEEP_K = 128
DEEP_K_MIN = 1024
DEEP_K_ARCHS = ("sm_90",)


def choose_tile(m, n, k, arch: str = "") -> GemmTile:
    """The large tile unless the GEMM is too small to fill it (a free size counts as large; K steps of
    DEEP_K on DEEP_K_ARCHS where K is whole steps, at least DEEP_K_MIN), with no K step or column block
    wider than the GEMM where one mma tile covers it: the padding would be multiplied too (a head dim of 32
    is attention's K in Q.K^T and N in P.V)."""
    m, n, k = (int(d) if isinstance(d, tirx.IntImm) else None for d in (m, n, k))
    tile = SMALL if (m is not None and m <= 64) or (n is not None and n <= 64) else LARGE
    if tile is LARGE and k is not None and k % DEEP_K == 0 and k >= DEEP_K_MIN and arch.startswith(DEEP_K_ARCHS):
        tile = replace(tile, bk=DEEP_K)
    narrow = TILE_N * tile.wn  # the narrowest column block: one accumulator tile per warp
    return replace(tile, bk=TILE_K if k is not None and k <= TILE_K else tile.bk,
                   bn=narrow if n is not None and n <= narrow else tile.bn)


def _operand_dtypes(block: tirx.Block) -> tuple[str, str] | None:
    """(A, B) dtypes of an int32 += 8-bit x 8-bit reduction the mma takes (either operand uint8 or int8)."""
    if len(block.reads) < 2 or len(block.writes) != 1 or block.writes[0].source.dtype != "int32":
        return None
    a, b = (r.source.dtype for r in block.reads[:2])
    return (a, b) if a in mma_intrin.BYTE_TYPES and b in mma_intrin.BYTE_TYPES else None


def _leading_batch(block: tirx.Block) -> bool:
    """Whether both operands and the output are indexed first by one variable, as a batched matmul's
    [batch, rows, K] operands (matmul_lowering.py) are."""
    firsts = [region.region[0].min for region in (*block.reads[:2], block.writes[0])]
    return all(isinstance(f, tirx.Var) and f.same_as(firsts[0]) for f in firsts)


def _product_form(block: tirx.Block) -> str | None:
    """Which mma_intrin.PRODUCTS the block's update `C = C + product(a, b)` is written as."""
    update = block.body
    if not isinstance(update, tirx.BufferStore) or not isinstance(update.value, tirx.Add):
        return None
    product = update.value.b
    if isinstance(product, tirx.Mul) and isinstance(product.a, tirx.Cast) and isinstance(product.b, tirx.Cast):
        return "i32" if str(product.a.ty) == "int32" else None
    if isinstance(product, tirx.Cast) and isinstance(product.value, tirx.Mul):
        return "i16" if str(product.value.ty) == "int16" else None
    return None


class TensorCoreGemm(GPUScheduleRule):
    """Kernels whose one reduction is an 8-bit x int8 -> int32 GEMM (linear_int, ungrouped conv2d_int)
    with spatial epilogue blocks; others are left to the next rule. `tile` fixes the block tile (the
    kernel bench times alternatives); by default choose_tile picks it per kernel."""

    def __init__(self, tile: GemmTile | None = None):
        super().__init__()
        self.tile = tile

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            return _gemm_schedule(s_tir.Schedule(func), self.tile, target.arch)
        except s_tir.ScheduleError:
            pass
        # Rows that fuse a free batch with a fixed length ([batch, seq, K] activations, N*OH*OW conv
        # rows): TVM's region analysis cannot prove that the reindexed rows cover what the GEMM reads,
        # so every primitive calls the scope "not a stage pipeline". The same schedule, checked for the
        # same kernel at any fixed batch, is applied without those checks.
        try:
            return _gemm_schedule(s_tir.Schedule(func, enable_check=False), self.tile, target.arch)
        except s_tir.ScheduleError:
            return None  # dlight's CUDA-core matmul takes the kernel (exact, slower)


def _gemm_schedule(sch: s_tir.Schedule, tile: GemmTile | None, arch: str) -> s_tir.Schedule | None:
    """`sch` with its GEMM on tensor cores, or None when the kernel is not an 8-bit GEMM."""
    reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if reductions is None:
        return None
    main = reductions[0]
    block = sch.get(main)
    dtypes, product = _operand_dtypes(block), _product_form(block)
    if dtypes is None or product is None or get_index_map(block) is None:
        return None
    widths = [_copy_width(block, operand) for operand in (0, 1)]
    _normalize(sch, main)
    batch, m, n, k = (sch.get(loop).extent for loop in sch.get_loops(main))
    if not (isinstance(batch, tirx.IntImm) and batch.value == 1) and not _leading_batch(block):
        return None  # a depthwise conv: a batch (its channels) of one-column GEMMs
    tile = tile or choose_tile(m, n, k, arch)
    sch.pad_einsum(main, [1, tile.bm, tile.bn, tile.bk])
    _schedule_gemm(sch, main, tile, dtypes, product, widths)
    return sch


def _normalize(sch: s_tir.Schedule, main) -> None:
    """C[1, M, N] += A[1, M, K] * B[1, N, K] (dlight's own normalization, as its matmul rules do)."""
    a = sch.reindex(main, ("read", 0))
    b = sch.reindex(main, ("read", 1))
    c = sch.reindex(main, ("write", 0))
    block_map, a_map, b_map, c_map = get_index_map(sch.get(main))
    sch.transform_layout(a, ("write", 0), a_map)
    sch.transform_layout(b, ("write", 0), b_map)
    sch.transform_layout(c, ("read", 0), c_map)
    sch.transform_block_layout(main, block_map)


def _schedule_gemm(sch: s_tir.Schedule, main, tile: GemmTile, dtypes: tuple[str, str], product: str,
                   widths: list[int]) -> None:
    tiles_m, tiles_n = tile.warp_tiles
    batch, i, j, k = sch.get_loops(main)
    # The 16 x 16 x 32 tiles one mma intrinsic computes become blocks of their own (tensorized below).
    i, i_mma = sch.split(i, [None, TILE_M])
    j, j_mma = sch.split(j, [None, TILE_N])
    k, k_mma = sch.split(k, [None, TILE_K])
    sch.reorder(i, j, k, i_mma, j_mma, k_mma)
    mma_block = main
    tile_block = sch.blockize(i_mma)

    i_block, i_warp, i_tile = sch.split(i, [None, tile.wm, tiles_m])
    j_block, j_warp, j_tile = sch.split(j, [None, tile.wn, tiles_n])
    k_step, k_inner = sch.split(k, [None, tile.bk // TILE_K])
    sch.reorder(j_block, i_block, i_warp, j_warp, k_step, k_inner, i_tile, j_tile)
    sch.bind(batch, "blockIdx.z")
    sch.bind(j_block, "blockIdx.x")  # neighbouring blocks share A rows: they run together and hit L2
    sch.bind(i_block, "blockIdx.y")
    warp = sch.fuse(i_warp, j_warp)
    sch.bind(warp, "threadIdx.y")

    _stage_to_shared(sch, tile_block, 0, k_step, tile, widths[0])
    _stage_to_shared(sch, tile_block, 1, k_step, tile, widths[1])
    _load_fragments(sch, tile_block, 0, k_inner, "A", dtypes[0])
    _load_fragments(sch, tile_block, 1, k_inner, "B", dtypes[1])

    acc = sch.cache_write(tile_block, 0, "warp")
    sch.reverse_compute_at(acc, warp)
    sch.transform_layout(acc, ("read", 0), _accumulator_layout)
    init = sch.decompose_reduction(tile_block, k_step)
    sch.tensorize(sch.get_loops(sch.get_child_blocks(init)[0])[-2], MMA_fill_16x16_i32_INTRIN)
    sch.tensorize(sch.get_loops(mma_block)[-3], mma_intrin.mma_intrin(*dtypes, product))
    auto_inline_consumer_chain(sch, acc)
    _store_from_fragments(sch, acc)

    # Pipelines: the K step's copies run `stages - 1` steps ahead of its mma (cp.async groups), and
    # inside a step the next 32-wide slice's ldmatrix runs ahead of the current slice's mma. The inner
    # pipeline is expanded first (prologue, body, epilogue), so the K step then has 2 + 3 statements.
    sch.annotate(k_step, "software_pipeline_stage", [0, 0] + [tile.stages - 1] * 3)
    sch.annotate(k_step, "software_pipeline_order", [0, 1, 2, 3, 4])
    sch.annotate(k_step, "software_pipeline_async_stages", [0])
    sch.annotate(k_inner, "software_pipeline_stage", [0, 0, 1])
    sch.annotate(k_inner, "software_pipeline_order", [0, 1, 2])


def _copy_width(block: tirx.Block, operand: int) -> int:
    """Bytes one thread copies at once for an operand: a vector only where consecutive K elements are
    provably consecutive in memory and the rows aligned, i.e. the buffer's innermost index is a reduction
    variable (linear's k, the conv input's channel) whose extent the width divides. TVM's CUDA codegen
    has no type for a gathered vector (a conv weight in HWIO order, read along K with a stride of Cout)."""
    innermost = block.reads[operand].region[-1].min
    for iv in block.iter_vars:
        if iv.var.same_as(innermost) and iv.iter_type == tirx.IterVar.CommReduce:
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return 1  # a free K: no width is known to divide it
            return next((w for w in _COPY_BYTES if int(iv.dom.extent) % w == 0), 1)
    return 1


def _stage_to_shared(sch: s_tir.Schedule, block, operand: int, k_step, tile: GemmTile, width: int) -> None:
    """Copy the block tile's operand slice of one K step into shared memory, `width` bytes per thread and
    copy, with the operand's producers (padding, the reindexed conv input) inlined into the copy."""
    copy = sch.cache_read(block, operand, SHARED)
    sch.compute_at(copy, k_step)
    inline_producers(sch, copy)
    rows, cols = sch.get_loops(copy)[-2:]
    fused = sch.fuse(rows, cols)
    _, ty, tx, vec = sch.split(fused, [None, tile.warps, WARP, width])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)
    # Rows of BK + 16 bytes: the 8 rows of one ldmatrix phase start in 8 different 4-bank groups.
    sch.storage_align(copy, 0, axis=-2, factor=tile.bk, offset=16)


def inline_producers(sch: s_tir.Schedule, block) -> None:
    """Inline every producer chain of `block` (reindex and pad_einsum copies, the conv's padding)."""
    while True:
        producers = [p for p in sch.get_producers(block) if sch.get(p).name_hint != "root"]
        if not producers:
            return
        for p in producers:
            inline_producers(sch, p)
            sch.compute_inline(p)


def _load_fragments(sch: s_tir.Schedule, block, operand: int, k_inner, name: str, dtype: str) -> None:
    """The warp's 16 x 32 operand tiles of one 32-wide K slice, from shared memory with ldmatrix."""
    frag = sch.cache_read(block, operand, "warp")
    sch.compute_at(frag, k_inner)
    layout = mma_intrin.OPERANDS[name][0]
    sch.transform_layout(frag, ("write", 0), lambda s, r, c: (s, r // TILE_M, c // TILE_K, *layout(r % TILE_M, c % TILE_K)))
    rows, cols = sch.get_loops(frag)[-2:]
    tiles, rows = sch.split(rows, [None, TILE_M])
    sch.reorder(tiles, rows, cols)
    sch.tensorize(rows, mma_intrin.ldmatrix_intrin(name, dtype, SHARED))


def _accumulator_layout(s, i, j):
    return (s, i // TILE_M, j // TILE_N, *mma_intrin.fragment_of_accumulator(i % TILE_M, j % TILE_N))


def _store_from_fragments(sch: s_tir.Schedule, store) -> None:
    """Loop over the warp tile's accumulators in fragment order: lane = 4 * (row % 8) + col % 8 // 2 runs
    on threadIdx.x, so every lane reads its own registers (the warp buffer's lane index must be
    threadIdx.x), and stores the epilogue's result of its 8 values per 16 x 16 tile."""
    rows, cols = sch.get_loops(store)[-2:]
    tile_r, r_hi, r_lo = sch.split(rows, [None, 2, 8])
    tile_c, c_hi, c_mid, c_lo = sch.split(cols, [None, 2, 4, 2])
    sch.reorder(tile_r, tile_c, r_lo, c_mid, c_hi, r_hi, c_lo)
    lane = sch.fuse(r_lo, c_mid)
    sch.bind(lane, "threadIdx.x")
    for loop in (c_hi, r_hi, c_lo):
        sch.unroll(loop)
