"""The packed weight format of the CUDA GEMV kernel (cuda_gemv.py, whose docstring describes the layout):
numpy only, so that a machine with the TVM runtime alone can pack weights for a built kernel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WORDS_PER_LOAD = 4  # 4 x uint32: one 128-bit load per lane
SUBNORMAL = float(2**24)  # a code u in a float16's mantissa bits reads as u / 2^24


@dataclass(frozen=True)
class Codes:
    """Weight codes of `bits` bits packed into uint32 words (the module docstring has the layout)."""

    bits: int

    @property
    def per_word(self) -> int:
        return 32 // self.bits

    @property
    def chunk(self) -> int:
        """Values one lane reads per row with one 128-bit load."""
        return WORDS_PER_LOAD * self.per_word

    @property
    def offset(self) -> int:
        return 1 << (self.bits - 1)

    @property
    def pair_mask(self) -> int:
        code = (1 << self.bits) - 1
        return code | (code << 16)

    def positions(self) -> list[int]:
        """k offset (within a word) held at each code position, low bits first."""
        half = self.per_word // 2
        return [2 * (p % half) + p // half for p in range(self.per_word)]

    def pack(self, w: np.ndarray) -> np.ndarray:
        """int8 codes [N, K] (K a multiple of per_word) -> uint32 [N, K / per_word]."""
        n, k = w.shape
        lo, hi = -self.offset, self.offset - 1
        if w.size and (w.min() < lo or w.max() > hi):
            raise ValueError(f"codes [{w.min()}, {w.max()}] do not fit {self.bits} bits [{lo}, {hi}]")
        unsigned = (w.astype(np.int64) + self.offset).reshape(n, k // self.per_word, self.per_word)
        by_position = unsigned[:, :, self.positions()]
        shifts = np.arange(self.per_word, dtype=np.int64) * self.bits
        return np.bitwise_or.reduce(by_position << shifts, axis=2).astype(np.uint32)

    def unpack(self, words: np.ndarray) -> np.ndarray:
        """uint32 [N, K / per_word] -> int8 codes [N, K]: the inverse of `pack`."""
        n, count = words.shape
        shifts = np.arange(self.per_word, dtype=np.uint32) * np.uint32(self.bits)
        by_position = (words[:, :, None] >> shifts) & np.uint32((1 << self.bits) - 1)
        in_k_order = by_position[:, :, np.argsort(self.positions())]
        return (in_k_order.astype(np.int16) - self.offset).astype(np.int8).reshape(n, count * self.per_word)


# storage bits of the weight constant -> its codes; int8 weights without storage bits are 8-bit codes.
CODES = {4: Codes(4), 8: Codes(8)}
