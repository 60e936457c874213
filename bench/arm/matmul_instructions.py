"""Executed aarch64 instructions of the kernels on the path of attention's two activation matmuls
(Q.K^T and P.V: operand copies, packing, the matmul kernels, the requantize) for one MiniLM-shaped
self-attention block (hidden 384, 12 heads of 32, batch 1), "arm" target, on the emulated device
(qcompile/backends/tvm/arm/instruction_counts.py). Run it on two checkouts to compare them:

    PYTHONPATH=<checkout> .venv/bin/python bench/arm/matmul_instructions.py --seq 16 128
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

import qcompile
from qcompile.backends.tvm.arm.instruction_counts import count_instructions

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.models import Attention  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[16, 128])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for seq in args.seq:
        torch.manual_seed(0)
        model = Attention(d=384, heads=12).eval()  # MiniLM's shape
        x = torch.randn(1, seq, 384)
        cm = qcompile.compile(model, (x,), target="arm", calibration=[torch.randn(1, seq, 384) for _ in range(3)],
                              progress=False)
        with tempfile.TemporaryDirectory() as d:
            counts = count_instructions(cm.save(Path(d) / "attention"), [x])
        # Everything between the Q/K/V linears and the output linear except softmax and the scores' dequantize.
        path = {n: k for n, k in counts.kernels.items() if k.calls and not n.startswith(("gemm_", "quantize", "fused_softmax",
                                                                                        "fused_dequantize", "dequantize"))}
        print(f"seq {seq}: kernel, calls, instructions, sdot")
        for name, k in path.items():
            print(f"  {name:60s} {k.calls:3d} {k.instructions:10d} {k.mnemonics.get('sdot', 0):8d}")
        print(f"  {'matmul path total':60s}     {sum(k.instructions for k in path.values()):10d}")


if __name__ == "__main__":
    main()
