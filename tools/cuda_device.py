"""The GPU machine's side of tools/cuda_bundle.py: load the runtime-only TVM and the built cases, run them
and compare with the reference outputs. Imports nothing of qcompile but its runtime file (the GPU machine
has torch and the bundle's TVM runtime, not qcompile's dependencies); bench/cuda/end_to_end.py and tests/gpu use it."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / ".gpu"


def runtime(bundle: Path = DEFAULT_BUNDLE):
    """qcompile/backends/tvm/cuda/runtime.py over the bundle's runtime-only TVM (once per process)."""
    if "qcompile_cuda_runtime" in sys.modules:
        return sys.modules["qcompile_cuda_runtime"]
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    sys.path.insert(0, str(Path(bundle) / "site"))
    spec = importlib.util.spec_from_file_location("qcompile_cuda_runtime", ROOT / "qcompile/backends/tvm/cuda/runtime.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def cuda_seconds(fn, number: int, repeat: int) -> float:
    """Median seconds per call of `fn` over `repeat` rounds of `number` calls queued back to back, timed by
    CUDA events on the current stream (after warm-up calls)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    rounds = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        rounds.append(start.elapsed_time(end) / 1e3 / number)
    return statistics.median(rounds)


def kernel_times(fn, calls: int = 20) -> dict[str, float]:
    """Seconds of GPU time per call of `fn` by kernel name, as CUPTI records it (torch.profiler): the
    kernels of any library, TVM's too, without launch overheads or gaps between calls. Empty where CUPTI
    fails."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
    except RuntimeError as e:
        print(f"CUPTI failed: {e}", file=sys.stderr)
        return {}
    times: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset")):
            times[e.name] = times.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e6 / calls
    return times


def kernel_seconds(fn, calls: int = 20) -> float:
    """Seconds of GPU kernel time per call of `fn` (kernel_times summed); NaN where CUPTI fails."""
    times = kernel_times(fn, calls)
    return sum(times.values()) if times else float("nan")


@dataclass
class Case:
    name: str
    directory: Path
    spec: dict

    def model(self, rt):
        return rt.GpuModel(self.directory / "model.so")

    def io(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Inputs and expected outputs, their rows repeated to the model's static batch where it has one."""
        data = torch.load(self.directory / "io.pt")
        inputs, expected = data["inputs"], data["expected"]
        if "batch" in self.spec:
            return repeated(inputs, self.spec["batch"]), repeated(expected, self.spec["batch"])
        return inputs, expected


def cases(bundle: Path = DEFAULT_BUNDLE) -> list[Case]:
    found = []
    for spec_file in sorted((Path(bundle) / "cases").glob("*/case.json")):
        spec = json.loads(spec_file.read_text())
        found.append(Case(spec["name"], spec_file.parent, spec))
    return found


def repeated(inputs: list[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """The inputs tiled along the batch dimension to `batch` rows."""
    return [t.repeat(-(-batch // t.shape[0]), *[1] * (t.dim() - 1))[:batch] for t in inputs]


def mismatch(case: Case, model) -> str | None:
    """None when the GPU's outputs equal the reference's exactly (or within the case's tolerance)."""
    inputs, expected = case.io()
    got = [o.cpu() for o in model(*inputs)]
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    tolerance = case.spec.get("compare", "exact")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape or g.dtype != e.dtype:
            return f"output {i}: {g.dtype}{list(g.shape)}, expected {e.dtype}{list(e.shape)}"
        if tolerance == "exact" and not torch.equal(g, e):
            wrong = (g != e).sum().item()
            return f"output {i}: {wrong} of {e.numel()} values differ (max |diff| {(g.double() - e.double()).abs().max().item():.3g})"
        if tolerance != "exact" and not torch.allclose(g, e, rtol=tolerance["rtol"], atol=tolerance["atol"]):
            return f"output {i}: max |diff| {(g - e).abs().max().item():.3g} over rtol {tolerance['rtol']} atol {tolerance['atol']}"
    return None


def kernel_bench(doc: str, build, run, number: int, repeat: int) -> None:
    """The command line of a kernel bench: `build OUT` where TVM's compiler is, `run OUT` on the GPU
    machine with OUT inside a bundle (its runtime-only TVM is loaded first)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["build", "run"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--number", type=int, default=number)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--only", default="", help="`run`: the kernels whose name contains this")
    args = parser.parse_args()
    if args.step == "build":
        sys.path.insert(0, str(ROOT))
        build(args.out)
    else:
        why = runtime(args.out.parent).missing_gpu()
        if why:
            sys.exit(f"`run` runs on a GPU machine, and {why}")
        index = [e for e in json.loads((args.out / "index.json").read_text()) if args.only in e["name"]]
        run(args.out, index, args.number, args.repeat)
