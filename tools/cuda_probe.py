"""One bundled case on the GPU, step by step, for debugging on the GPU machine: each step is printed before
it runs (a crash names its step), and a mismatch is located (how many values, which rows, by how much).

    python3 tools/cuda_probe.py CASE [CASE ...]        # the cases of .gpu/cases (or QCOMPILE_GPU_BUNDLE)
"""
from __future__ import annotations

import faulthandler
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cuda_device  # noqa: E402


def _step(what: str) -> None:
    print(f"  - {what}", flush=True)


def _locate(got: torch.Tensor, expected: torch.Tensor) -> str:
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return f"{got.dtype}{list(got.shape)} for {expected.dtype}{list(expected.shape)}"
    wrong = got.double() - expected.double()
    bad = wrong.abs() > 0
    if not bad.any():
        return "equal"
    rows = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten().tolist()
    first = tuple(bad.nonzero()[0].tolist())
    return (f"{int(bad.sum())} of {bad.numel()} differ, max |diff| {wrong.abs().max().item():.4g}; rows {rows[:16]}; "
            f"first at {first}: {got[first].item()} for {expected[first].item()}")


def probe(rt, case: cuda_device.Case) -> None:
    import tvm

    print(f"{case.name}: {case.spec}", flush=True)
    _step("load")
    model = case.model(rt)
    inputs, expected = case.io()
    _step(f"inputs {[(t.dtype, list(t.shape)) for t in inputs]} to the GPU")
    args = model._arguments(inputs)
    _step("run")
    outputs = model.vm["main"](*args)
    tvm.cuda(0).sync()
    _step(f"outputs {[(str(o.dtype), list(o.shape)) for o in outputs]}; copy to the host")
    host = [torch.from_numpy(o.numpy()) for o in outputs]
    for i, (g, e) in enumerate(zip(host, expected)):
        print(f"    output {i}: {_locate(g, e)}", flush=True)
    _step("torch.from_dlpack")
    views = [torch.from_dlpack(o) for o in outputs]
    _step(f"dlpack views {[(v.dtype, list(v.shape), v.stride(), str(v.device)) for v in views]}; read")
    print(f"    equal to the host copies: {all(torch.equal(v.cpu(), h) for v, h in zip(views, host))}", flush=True)


def main() -> None:
    faulthandler.enable()
    bundle = Path(os.environ.get("QCOMPILE_GPU_BUNDLE", cuda_device.DEFAULT_BUNDLE))
    rt = cuda_device.runtime(bundle)
    cases = {c.name: c for c in cuda_device.cases(bundle)}
    for name in sys.argv[1:]:
        probe(rt, cases[name])


if __name__ == "__main__":
    main()
