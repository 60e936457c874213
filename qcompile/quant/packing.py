"""Sub-byte constants packed into bytes: how an artifact stores constants narrower than their dtype.

int4 (signed, two's complement nibbles, values -8..7, held one per int8 element in graphs): the tensor is
flattened in row-major (C) order and value 2i goes to the LOW nibble of byte i, value 2i+1 to its HIGH
nibble. An odd count leaves the high nibble of the last byte zero. The packed tensor is uint8
[ceil(numel / 2)]; the original shape is stored beside it (graph.json).

Backends pack for their own kernels separately (e.g. gemm_kernel.pack_weight_int4); this is the file format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Packing:
    bits: int
    pack: Callable[[torch.Tensor], torch.Tensor]  # graph constant -> packed uint8 [ceil(numel * bits / 8)]
    unpack: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]  # (packed, shape) -> graph constant; ValueError if malformed


def pack_int4(t: torch.Tensor) -> torch.Tensor:
    if t.dtype != torch.int8:
        raise ValueError(f"int4 constants are held as int8, got {t.dtype}")
    v = t.reshape(-1)
    if v.numel() and (int(v.min()) < -8 or int(v.max()) > 7):
        raise ValueError(f"values [{int(v.min())}, {int(v.max())}] do not fit int4 [-8, 7]")
    nibbles = (v.to(torch.int16) & 0xF).to(torch.uint8)
    nibbles = torch.cat([nibbles, nibbles.new_zeros(v.numel() % 2)]).reshape(-1, 2)
    return nibbles[:, 0] | (nibbles[:, 1] << 4)


def unpack_int4(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    count = math.prod(shape)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != -(-count // 2):
        raise ValueError(f"expected uint8 [{-(-count // 2)}] for {count} int4 values, got {packed.dtype} {list(packed.shape)}")
    if count % 2 and int(packed[-1]) >> 4:
        raise ValueError("the unused high nibble of the last byte is not zero")
    nibbles = torch.stack([packed & 0xF, packed >> 4], dim=1).reshape(-1)[:count].to(torch.int8)
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).reshape(shape)


INT4 = Packing(4, pack_int4, unpack_int4)
# storage bits -> packing; a constant whose storage bits are not here is stored as its own dtype.
PACKINGS: dict[int, Packing] = {4: INT4}


def stored_size(numel: int, bits: int) -> int:
    """Bytes of `numel` values of `bits` bits packed densely (what the artifact and the report count)."""
    return -(-numel * bits // 8)
