"""The packed weight format of the CUDA GEMV kernel (gemv_kernel.py, whose docstring describes the layout):
numpy only, so that a machine with the TVM runtime alone can pack weights for a built kernel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORDS_PER_LOAD = 4  # 4 x uint32: one 128-bit load per lane
SUBNORMAL = float(2**24)  # a code u in a float16's mantissa bits reads as u / 2^24


@dataclass(frozen=True)
class CodeWidth:
    """Signed codes of `bits` bits, stored unsigned (code + offset) in uint32 words."""

    bits: int

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def offset(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def pair_mask(self) -> int:
        code = (1 << self.bits) - 1
        return code | (code << 16)

    def check_fits(self, w: np.ndarray) -> None:
        lo, hi = -self.offset, self.offset - 1
        if w.size and (w.min() < lo or w.max() > hi):
            raise ValueError(f"codes [{w.min()}, {w.max()}] do not fit {self.bits} bits [{lo}, {hi}]")

    def pack_in_order(self, w: np.ndarray) -> np.ndarray:
        """int8 codes [N, K] (K a multiple of per_word) -> uint32 [N, K / per_word], code k at bits
        (k % per_word) * bits of word k // per_word: the order a TE expression reads simply (the
        weight-only GEMM's dequantize)."""
        n, k = w.shape
        self.check_fits(w)
        unsigned = (w.astype(np.int64) + self.offset).reshape(n, k // self.per_word, self.per_word)
        shifts = np.arange(self.per_word, dtype=np.int64) * self.bits
        return np.bitwise_or.reduce(unsigned << shifts, axis=2).astype(np.uint32)


@dataclass(frozen=True)
class Codes(CodeWidth):
    """Weight codes packed for the CUDA-core GEMV (the module docstring has the layout)."""

    @property
    def chunk(self) -> int:
        """Values one lane reads per row with one 128-bit load."""
        return WORDS_PER_LOAD * self.per_word

    def positions(self) -> list[int]:
        """k offset (within a word) held at each code position, low bits first."""
        half = self.per_word // 2
        return [2 * (p % half) + p // half for p in range(self.per_word)]

    def pack(self, w: np.ndarray) -> np.ndarray:
        """int8 codes [N, K] (K a multiple of per_word) -> uint32 [N, K / per_word]: each word's codes put
        in position order, then packed in order."""
        n, k = w.shape
        by_position = w.reshape(n, k // self.per_word, self.per_word)[:, :, self.positions()]
        return self.pack_in_order(by_position.reshape(n, k))

    def word_shape(self, n: int, k: int) -> tuple[int, int]:
        return n, k // self.per_word

    def arrange_scales(self, scale: np.ndarray) -> np.ndarray:
        """The kernel reads the group scales [N, groups] as they are."""
        return scale

    def unpack(self, words: np.ndarray, n: int) -> np.ndarray:
        """uint32 [N, K / per_word] -> int8 codes [N, K]: the inverse of `pack`."""
        if words.shape[0] != n:
            raise ValueError(f"{words.shape[0]} rows of words, not {n}")
        count = words.shape[1]
        shifts = np.arange(self.per_word, dtype=np.uint32) * np.uint32(self.bits)
        by_position = (words[:, :, None] >> shifts) & np.uint32((1 << self.bits) - 1)
        in_k_order = by_position[:, :, np.argsort(self.positions())]
        return (in_k_order.astype(np.int16) - self.offset).astype(np.int8).reshape(n, count * self.per_word)


# storage bits of the weight constant -> its codes; int8 weights without storage bits are 8-bit codes.
CODES = {4: Codes(4), 8: Codes(8)}


TILE = 16  # an m16n8k16 A fragment: 16 weight rows x 16 k
MMA_LANE_CODES = 8  # codes of one A fragment per lane: registers a0..a7
MAGIC_X2 = 0x64006400  # a half2 of 1024.0: a code u in the low mantissa bits of a half reads as 1024 + u


@dataclass(frozen=True)
class RegisterDecode:
    """How one half2 fragment register (two codes) comes out of its word, exactly: the bits
    `byte_perm(word, MAGIC_X2, selector)` if a selector is given, else `(word >> shift) & mask | MAGIC_X2`,
    read as half2, times `scale` plus `bias` (one fused multiply-add, exact: small integers and powers of
    two)."""

    shift: int = 0
    mask: int = 0
    selector: int | None = None
    scale: float = 1.0
    bias: float = 0.0

    def bits_of(self, words: np.ndarray) -> np.ndarray:
        """The half2 bits, for uint32 words (numpy: what the kernel computes)."""
        words = words.astype(np.uint64)
        if self.selector is None:
            return (((words >> self.shift) & self.mask) | MAGIC_X2).astype(np.uint32)
        pool = words | (np.uint64(MAGIC_X2) << np.uint64(32))  # byte_perm's 8 bytes: word, then the magic
        picked = [(pool >> np.uint64(8 * ((self.selector >> (4 * i)) & 7))) & np.uint64(0xFF) for i in range(4)]
        return (picked[0] | picked[1] << 8 | picked[2] << 16 | picked[3] << 24).astype(np.uint32)

    def __call__(self, words: np.ndarray) -> np.ndarray:
        """float32 [..., 2]: the two codes (low half first) of each word."""
        halves = self.bits_of(words).view(np.float16).reshape(*words.shape, 2).astype(np.float32)
        return halves * np.float32(self.scale) + np.float32(self.bias)


@dataclass(frozen=True)
class MmaCodes(CodeWidth):
    """Weight codes of `bits` bits laid out as the A fragments of float16 m16n8k16 mma (mma_gemv_kernel.py).

    The weight is cut into 16-row tiles; a tile's K into steps of `step_k` values, one 128-bit load (4
    words) per lane per step, i.e. `tiles_per_step` A fragments of 16 x 16. Fragment register r (a half2:
    elements a_2r, a_2r+1) holds rows g + 8 (r % 2) and fragment k slots 2t + 8 (r // 2) + e, e = 0, 1,
    for lane 4g + t (the PTX ISA's layout). Register r lives in word r // pairs, shifted by (r % pairs) *
    bits, its two codes at that shift and 16 bits above it, so that one mask puts both in the low
    mantissa bits of a half2 whose exponent bits a magic number sets (1024 + u each).

    The k slots are a permutation of the step's k, the same for A and B (the mma sums over them): lane
    t's slots of all the step's fragments are the `lane_k` consecutive k from t * lane_k, so each lane's
    float16 activations for a step are one contiguous run (fragment j: its slots in order are k
    t * lane_k + 4j + 0..3)."""

    @property
    def pairs(self) -> int:
        """half2 registers one word decodes to."""
        return self.per_word // 2

    @property
    def words_per_fragment(self) -> int:
        return MMA_LANE_CODES // self.per_word

    @property
    def tiles_per_step(self) -> int:
        return WORDS_PER_LOAD // self.words_per_fragment

    @property
    def step_k(self) -> int:
        return TILE * self.tiles_per_step

    @property
    def lane_k(self) -> int:
        """Consecutive k of one lane per step: 4 per fragment."""
        return 4 * self.tiles_per_step

    def decoder(self, position: int) -> RegisterDecode:
        """The decode of the register at `position` of a word. int4: nibbles 4p and 16 + 4p; those at bits
        4-7 of a half are read in place as 1024 + 16u and scaled by 1/16 (Marlin's decode), so one shift
        by 8 serves positions 2 and 3. int8: bytes p and 2 + p, each put next to an exponent byte of the
        magic (byte 5) by one byte permutation."""
        if self.bits == 8:
            return RegisterDecode(selector=0x5250 + 0x101 * position, bias=-(1024.0 + self.offset))
        high = position % 2
        return RegisterDecode(shift=8 * (position // 2), mask=0x000F000F << 4 * high, scale=1 / 16 if high else 1.0,
                              bias=-(64.0 if high else 1024.0) - self.offset)

    def fragment_slot(self, lane: int, word: int, position: int, half: int) -> tuple[int, int, int]:
        """(row in the tile, k in the step, bit shift) of the code at `position` (0 .. pairs - 1) and
        `half` (0: low 16 bits) of `word` (0..3) of `lane`'s load."""
        g, t = divmod(lane, 4)
        fragment, word_in_fragment = divmod(word, self.words_per_fragment)
        r = word_in_fragment * self.pairs + position
        return g + 8 * (r % 2), t * self.lane_k + 4 * fragment + 2 * (r // 2) + half, position * self.bits + 16 * half

    def _slots(self):
        """Arrays [32, 4, pairs, 2] of each code's row, k and shift (fragment_slot over all codes)."""
        grid = np.indices((32, WORDS_PER_LOAD, self.pairs, 2)).reshape(4, -1).T
        slots = np.array([self.fragment_slot(*map(int, i)) for i in grid]).reshape(32, WORDS_PER_LOAD, self.pairs, 2, 3)
        return slots[..., 0], slots[..., 1], slots[..., 2].astype(np.uint32)

    def row_tiles(self, n: int) -> int:
        return -(-n // TILE)

    def word_shape(self, n: int, k: int) -> tuple[int, int]:
        return self.row_tiles(n), k // self.step_k * 32 * WORDS_PER_LOAD

    def pack(self, w: np.ndarray) -> np.ndarray:
        """int8 codes [N, K] (K a multiple of step_k) -> uint32 [tiles, K / step_k * 128]; rows past N are
        code 0."""
        n, k = w.shape
        if k % self.step_k:
            raise ValueError(f"K ({k}) must be a multiple of {self.step_k} for {self.bits}-bit mma fragments")
        self.check_fits(w)
        tiles, steps = self.row_tiles(n), k // self.step_k
        unsigned = np.full((tiles * TILE, k), self.offset, np.uint32)
        unsigned[:n] = w.astype(np.int64) + self.offset
        by_step = unsigned.reshape(tiles, TILE, steps, self.step_k).transpose(0, 2, 1, 3)
        rows, ks, shifts = self._slots()
        codes = by_step[:, :, rows, ks]  # [tiles, steps, 32, 4, pairs, 2]
        words = np.bitwise_or.reduce(codes << shifts, axis=(4, 5))
        return words.astype(np.uint32).reshape(tiles, steps * 32 * WORDS_PER_LOAD)

    def arrange_scales(self, scale: np.ndarray) -> np.ndarray:
        """Group scales [N, groups] -> [groups, tiles * 16] (a lane's two rows of a step are 8 apart in one
        row of groups; rows past N are 0)."""
        n, groups = scale.shape
        out = np.zeros((groups, self.row_tiles(n) * TILE), scale.dtype)
        out[:, :n] = scale.T
        return out

    def unpack(self, words: np.ndarray, n: int) -> np.ndarray:
        """uint32 [tiles, K / step_k * 128] -> int8 codes [n, K]: the inverse of `pack` (a gather, 8-bit
        arithmetic: a 28672 x 8192 weight in seconds)."""
        tiles, count = words.shape
        steps = count // (32 * WORDS_PER_LOAD)
        rows, ks, shifts = self._slots()
        by_lane = words.reshape(tiles, steps, 32, WORDS_PER_LOAD, 1, 1)
        unsigned = ((by_lane >> shifts) & np.uint32((1 << self.bits) - 1)).astype(np.uint8)
        signed = (unsigned - np.uint8(self.offset)).view(np.int8).reshape(tiles, steps, -1)
        order = np.argsort((rows * self.step_k + ks).ravel())  # code slots in (row, k) order
        by_row = signed[:, :, order].reshape(tiles, steps, TILE, self.step_k)
        return by_row.transpose(0, 2, 1, 3).reshape(tiles * TILE, steps * self.step_k)[:n]


MMA_CODES = {4: MmaCodes(4), 8: MmaCodes(8)}

# The weight layout of each GEMV kernel (weight_only_lowering.GEMV_KERNELS' names).
LAYOUTS = {"cuda_cores": CODES, "tensor_cores": MMA_CODES}


@dataclass(frozen=True)
class GemvProblem:
    """Inputs of a weight-only GEMV y = x W^T + b, W = codes x group scales, in one kernel's layout."""

    x: np.ndarray  # float16 [M, K]
    words: np.ndarray  # uint32, the kernel's layout
    scale: np.ndarray  # float16, as the kernel reads it (arrange_scales)
    bias: np.ndarray  # float32 [N]
    codes: np.ndarray  # int8 [N, K]
    group_scale: np.ndarray  # float16 [N, K / group]

    @property
    def group(self) -> int:
        return self.codes.shape[1] // self.group_scale.shape[1]

    def expected(self) -> np.ndarray:
        """y in float64 from the same codes and rounded inputs (small shapes: the bench does this on the GPU)."""
        weight = self.codes * np.repeat(self.group_scale.astype(np.float64), self.group, axis=1)
        return self.x.astype(np.float64) @ weight.T + self.bias


def random_gemv_problem(m: int, n: int, k: int, bits: int, kernel: str, group: int, seed: int = 0) -> GemvProblem:
    """Random packed words in `kernel`'s layout (every code equally likely), float16 activations and
    scales (groups of `group` along K), float32 bias."""
    rng = np.random.default_rng(seed)
    layout = LAYOUTS[kernel][bits]
    scale = (rng.random((n, k // group), dtype=np.float32) * 0.02 + 0.001).astype(np.float16)
    x = rng.standard_normal((m, k), dtype=np.float32).astype(np.float16)
    bias = rng.standard_normal(n, dtype=np.float32)
    words = rng.integers(0, 2**32, layout.word_shape(n, k), dtype=np.uint32)
    return GemvProblem(x, words, layout.arrange_scales(scale), bias, layout.unpack(words, n), scale)
