"""When a CPU kernel's loops go to the thread pool.

A parallel loop costs a thread-pool launch (TVMBackendParallelLaunch: wake the workers, wait for all of
them) of a few microseconds on this machine, whatever its extent. Models of small layers (an LSTM's
1 x 32 x 128 gate GEMMs, its 128-element gate arithmetic) run dozens of such kernels per call, each
doing well under a microsecond of work: with every loop parallel the LSTM zoo model ran 335 µs per call
on 2 threads and 170 µs with TVM_NUM_THREADS=1. Kernels below these amounts of work therefore run
their loops serially. The GEMM-like kernels take their sizes at run time: where the model fixes them
(`static_loop` gets the work), the kernel is built with the one loop kind it needs; where a size is free, it
branches on them (two copies of the loops: about twice the code to compile).
"""
from __future__ import annotations

from tvm.script import tirx as T

# Below these a kernel runs serially: about 5 µs of single-thread work, more than one launch costs.
SERIAL_MACS = 1 << 18  # multiply-accumulates of a GEMM, matmul or depthwise conv
SERIAL_ELEMENTS = 1 << 14  # outputs of an element-wise kernel


def is_small(*factors):
    """Whether the product of `factors` (TIR expressions in the kernel's free sizes, or ints), a count of
    multiply-accumulates, is below SERIAL_MACS: a TIR condition for the kernel to branch on. The product is
    taken in int64, since a large batch can pass 2^31."""
    macs = T.int64(1)
    for f in factors:
        macs = macs * T.Cast("int64", f)
    return macs < T.int64(SERIAL_MACS)


def _known_product(factors) -> int | None:
    """The product of ints and TIR constants; None when one of them is a free size."""
    total = 1
    for f in factors:
        value = getattr(f, "value", f)
        if not isinstance(value, int):
            return None
        total *= value
    return total


def static_loop(*factors):
    """The loop kind for a kernel whose work is the product of `factors` (ints, TIR constants or free
    sizes): T.serial or T.parallel when all are known at build time, None when the kernel must branch."""
    total = _known_product(factors)
    if total is None:
        return None
    return T.serial if total < SERIAL_MACS else T.parallel


def reduction_is_small(extents: list[int | None]) -> bool:
    """Whether a reduction loop nest of these static extents (None: free at run time) is below SERIAL_MACS."""
    total = _known_product(extents)
    return total is not None and total < SERIAL_MACS


def elementwise_is_small(extents: list[int | None]) -> bool:
    """Whether an element-wise loop nest of these static extents (None: free at run time) is small."""
    total = _known_product(extents)
    return total is not None and total < SERIAL_ELEMENTS
