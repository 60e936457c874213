"""Float attention on x86, side by side in one process: qcompile's lowering (attention_lowering.py: matmul, softmax,
matmul) against TVM's importer's one `nn.attention` op, and PyTorch eager, on MiniLM's attention shapes.

    python bench/x86/attention.py [--batch 8] [--seq 128] [--rounds 20]

The model is a quantized self-attention block (int8 Q, K, V and output projections, as qcompile quantizes
MiniLM; the attention itself stays float between dequantize and quantize), compiled for "x86" twice: once
as this checkout lowers attention, once with TVM's importer's converter for it. Each round calls the three
systems in turn; the table reports medians over the rounds and the ratio to the importer's build.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

import qcompile
from qcompile.backends.tvm import attention


class SelfAttention(nn.Module):
    def __init__(self, width: int = 384, heads: int = 12):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x, mask):
        b, s, d = x.shape
        split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), attn_mask=mask)
        return self.o(y.transpose(1, 2).reshape(b, s, d))


def _ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = SelfAttention().eval()
    x = torch.randn(args.batch, args.seq, 384)
    mask = torch.zeros(args.batch, 1, 1, args.seq)  # additive, 4-D: the form TVM's importer takes
    inputs = (x, mask)
    compile_x86 = lambda: qcompile.compile(model, inputs, target="x86", calibration=[inputs], progress=False)  # noqa: E731
    ours = compile_x86()
    with mock.patch.dict(attention.CONVERTERS, clear=True):  # the float island through TVM's importer
        importer = compile_x86()
    reference = qcompile.compile(model, inputs, target="reference", calibration=[inputs], progress=False)
    for name, cm in (("attention.py", ours), ("importer", importer)):
        print(f"{name}: max |output - reference| {float((cm(*inputs) - reference(*inputs)).abs().max()):.2e}")
    systems = {"qcompile x86, attention.py": lambda: ours(*inputs), "qcompile x86, TVM importer's attention": lambda: importer(*inputs)}
    with torch.inference_mode():
        systems["PyTorch eager fp32"] = lambda: model(*inputs)
        for fn in systems.values():
            fn()
        times = {name: [] for name in systems}
        for _ in range(args.rounds):
            for name, fn in systems.items():
                times[name].append(_ms(fn))
    base = statistics.median(times["qcompile x86, TVM importer's attention"])
    print(f"\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, batch {args.batch}, sequence {args.seq}, 12 heads of 32\n")
    print("| system | median ms | vs the importer's attention |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {base / statistics.median(ts):.2f}x |")


if __name__ == "__main__":
    main()
