"""MobileNetV2 (real ImageNet weights), batch 1, 224x224: qcompile's peers side by side, measured in one run.

    .venv/bin/python bench/x86/mobilenet_v2.py            # full run (several minutes on 2 cores)
    .venv/bin/python bench/x86/mobilenet_v2.py --quick    # fewer rounds, skips the slow qcompile reference row

The machine is shared and noisy, so every number is taken in the same process and the systems' timing
rounds are interleaved: in each round every system (in a shuffled order) gets untimed warm-up calls for
50 ms (other systems' thread pools spin for milliseconds after their last call) followed by --per-round
timed calls. Latency is the median of all timed calls; "speed-up" is eager fp32's
median divided by the system's median, and both come from the same rounds.

Accuracy: top-1 agreement with eager fp32 over the 100 evaluation views (qcompile.zoo.images.evaluation_set)
and top-1 on the 20 labelled photos, via qcompile.zoo.evaluate.logits / compare.

Add a system with one line in EXTRA_SYSTEMS (name -> Extra(factory)), where factory(model, x, calibration)
returns a callable mapping a [1, 3, 224, 224] float tensor to [1, 1000] logits. Add a GEMM kernel with one
line in EXTRA_GEMMS (name -> factory(a, w, b) returning a zero-argument callable that runs the GEMM once).

Needs the `bench` extra: onnx, onnxruntime, onnxscript (for torch.onnx.export's dynamo exporter), torchao.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

# TVM's worker threads spin for 300000 sched_yield calls after each call, stealing both cores from whatever
# runs next in the interleaved rounds (ONNX Runtime, torch); cap the spin as bench/x86/gemm_int8.py does.
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "2000")

# ----------------------------------------------------------------------------------------------------------
# Hooks: extra systems and extra GEMM kernels
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Extra:
    """An extra row: factory(model, x, calibration) -> callable(x) -> logits."""

    factory: Callable
    timed_runs: int | None = None  # None: as many timed runs as the other systems; a number: at most that many
    note: str = ""


def _qcompile_factory(target: str) -> Callable:
    def build(model, x, calibration):
        import qcompile

        return qcompile.compile(model, (x,), target=target, calibration=calibration, progress=False)

    return build


EXTRA_SYSTEMS: dict[str, Extra] = {
    # The reference backend is the op-by-op integer oracle (seconds per image): few timed runs.
    "qcompile reference": Extra(_qcompile_factory("reference"), timed_runs=5,
                                 note="qcompile.compile(target='reference'): the op-by-op integer oracle, slow by design"),
    "qcompile x86": Extra(_qcompile_factory("x86"), note="qcompile.compile(target='x86'): TVM-built kernels, bit-exact with the reference"),
}

# name -> factory(a [M,K] fp32, w [N,K] fp32, b [N] fp32) -> zero-argument callable running one GEMM
EXTRA_GEMMS: dict[str, Callable] = {
    # "qcompile int8 kernel": lambda a, w, b: ...,
}


# ----------------------------------------------------------------------------------------------------------
# Machine description
# ----------------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                keep = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
                return " ".join(f for f in keep if f in flags) or "-"
    except OSError:
        pass
    return "?"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def versions() -> str:
    out = [f"python {platform.python_version()}", f"torch {torch.__version__}"]
    for mod in ["torchao", "onnx", "onnxruntime", "onnxscript"]:
        try:
            out.append(f"{mod} {__import__(mod).__version__}")
        except Exception:  # noqa: BLE001
            out.append(f"{mod} (not installed)")
    return ", ".join(out)


# ----------------------------------------------------------------------------------------------------------
# The systems
# ----------------------------------------------------------------------------------------------------------


@dataclass
class System:
    name: str
    fn: Callable | None = None  # x -> logits
    build_s: float = 0.0
    timed_runs: int | None = None
    note: str = ""
    error: str | None = None
    times_ms: list[float] = field(default_factory=list)
    round_ratios: list[float] = field(default_factory=list)
    agreement: float | None = None
    top1: float | None = None


def build_eager(model, x, cal, threads):
    return model


def build_inductor_fp32(model, x, cal, threads):
    compiled = torch.compile(model)  # inductor is the default backend
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        compiled(x)  # compile now, with weight freezing (PyTorch's recommended inference setting)
    return compiled


def has_vnni() -> bool:
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return True
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


def build_torchao_pt2e(model, x, cal, threads, reduce_range: bool = False):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exported = torch.export.export(model, (x,)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range))
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in cal:
            prepared(batch)
    converted = convert_pt2e(prepared)
    compiled = torch.compile(converted)
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        compiled(x)  # freezing lets inductor fold the q/dq weights into oneDNN qconv/qlinear
    return compiled


def _export_onnx(model, x, path: Path) -> str:
    """torch.onnx.export: the dynamo exporter (BN folded, one file), falling back to TorchScript's."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, verbose=False)
        return "dynamo"
    except Exception as exc:  # noqa: BLE001
        print(f"  dynamo ONNX export failed ({type(exc).__name__}: {exc}); using dynamo=False", flush=True)
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"])
        return "torchscript"


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: t.detach().numpy()})[0])

    return run, name


def build_ort_fp32(model, x, cal, threads, workdir: Path):
    path = workdir / "mobilenet_v2.onnx"
    if not path.exists():
        _export_onnx(model, x, path)
    return _ort_session(path, threads)[0]


def build_ort_int8(model, x, cal, threads, workdir: Path, reduce_range: bool = False):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = workdir / "mobilenet_v2.onnx"
    if not fp32.exists():
        _export_onnx(model, x, fp32)
    pre = workdir / "mobilenet_v2.pre.onnx"
    q = workdir / f"mobilenet_v2.int8{'.rr' if reduce_range else ''}.onnx"
    quant_pre_process(str(fp32), str(pre))
    import onnx

    input_name = onnx.load(str(pre)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter([{input_name: b.numpy()} for b in cal])

        def get_next(self):
            return next(self._it, None)

    quantize_static(
        str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        reduce_range=reduce_range,
    )
    return _ort_session(q, threads)[0]


# ----------------------------------------------------------------------------------------------------------
# Timing (interleaved rounds)
# ----------------------------------------------------------------------------------------------------------


def _time_call(fn, x) -> float:
    t0 = time.perf_counter_ns()
    fn(x)
    return (time.perf_counter_ns() - t0) / 1e6


WARMUP_MS = 50.0


def _warm_up(fn: Callable, x: torch.Tensor) -> None:
    """Untimed calls for WARMUP_MS (at least one): the previous system's thread pools keep spinning for
    some milliseconds after its last call (OpenMP's spin-wait in torch, ONNX Runtime's spinning pool) and
    steal the cores from whoever runs next (measured: qcompile x86 2.2 ms alone, 5.8 ms right after an
    eager call, 2.9 ms after a 10 ms pause). Every system is timed in its own steady state."""
    t0 = time.perf_counter()
    fn(x)
    while (time.perf_counter() - t0) * 1e3 < WARMUP_MS:
        fn(x)


def interleaved_latency(systems: list[System], x: torch.Tensor, rounds: int, per_round: int, seed: int = 0) -> None:
    """Each round: every live system, in a shuffled order, gets 50 ms of warm-up calls and per_round timed calls.
    A system with timed_runs set gets one timed call (no warm-up) per round until it has that many."""
    rng = random.Random(seed)
    live = [s for s in systems if s.fn is not None]
    eager = live[0]
    with torch.no_grad():
        for r in range(rounds):
            order = live[:]
            rng.shuffle(order)
            this_round: dict[str, list[float]] = {}
            for s in order:
                if s.timed_runs is not None:
                    if len(s.times_ms) >= s.timed_runs:
                        continue
                    ts = [_time_call(s.fn, x)]
                else:
                    _warm_up(s.fn, x)
                    ts = [_time_call(s.fn, x) for _ in range(per_round)]
                s.times_ms += ts
                this_round[s.name] = ts
            base = statistics.median(this_round[eager.name])
            for s in live:
                if s.name in this_round:
                    s.round_ratios.append(base / statistics.median(this_round[s.name]))
            print(f"  round {r + 1}/{rounds}: " + ", ".join(
                f"{s.name.split(' (')[0]} {statistics.median(this_round[s.name]):.1f}" for s in live if s.name in this_round
            ) + " ms", flush=True)


def quartiles(ts: list[float]) -> tuple[float, float]:
    if len(ts) < 4:
        return min(ts), max(ts)
    q = statistics.quantiles(ts, n=4)
    return q[0], q[2]


# ----------------------------------------------------------------------------------------------------------
# int8 GEMM
# ----------------------------------------------------------------------------------------------------------


def gemm_table(threads: int, rounds: int, per_round: int, size: int = 1024, seed: int = 0):
    M = N = K = size
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = torch.randn(N, generator=g)
    rows: list[tuple[str, Callable | None, str]] = []

    rows.append(("fp32 torch.nn.functional.linear", lambda: torch.nn.functional.linear(a, w, b), "fp32"))

    def fbgemm():
        prev = torch.backends.quantized.engine
        torch.backends.quantized.engine = "fbgemm"
        try:
            a_scale = a.abs().max().item() / 127
            qa = torch.quantize_per_tensor(a, a_scale, 128, torch.quint8)
            w_scale = w.abs().amax(dim=1) / 127
            qw = torch.quantize_per_channel(w, w_scale, torch.zeros(N, dtype=torch.long), 0, torch.qint8)
            packed = torch.ops.quantized.linear_prepack(qw, b)
            y_ref = torch.nn.functional.linear(a, w, b)
            y_scale, y_zp = (y_ref.max() - y_ref.min()).item() / 255, 128
            out = torch.ops.quantized.linear(qa, packed, y_scale, y_zp)
            err = (out.dequantize() - y_ref).abs().max().item()
        finally:
            torch.backends.quantized.engine = prev

        def run():
            return torch.ops.quantized.linear(qa, packed, y_scale, y_zp)

        return run, f"u8 x s8 (per-channel) -> u8, prepacked; max|err| {err:.2f}"

    rows_fns = [("int8 fbgemm torch.ops.quantized.linear", fbgemm)]
    for name, factory in EXTRA_GEMMS.items():
        rows_fns.append((name, lambda f=factory: (f(a, w, b), "extra (EXTRA_GEMMS)")))
    for name, make in rows_fns:
        try:
            fn, note = make()
            fn()
            rows.append((name, fn, note))
        except Exception as exc:  # noqa: BLE001
            rows.append((name, None, f"FAILED: {type(exc).__name__}: {exc}"))

    times: dict[str, list[float]] = {name: [] for name, fn, _ in rows if fn is not None}
    rng = random.Random(seed)
    live = [(n, f) for n, f, _ in rows if f is not None]
    for _ in range(rounds):
        order = live[:]
        rng.shuffle(order)
        for name, fn in order:
            fn()
            for _ in range(per_round):
                t0 = time.perf_counter_ns()
                fn()
                times[name].append((time.perf_counter_ns() - t0) / 1e6)
    ops = 2 * M * N * K
    fp32_med = statistics.median(times[rows[0][0]])
    out = []
    for name, fn, note in rows:
        if fn is None:
            out.append((name, None, None, None, 0, note))
            continue
        med = statistics.median(times[name])
        out.append((name, med, ops / (med * 1e-3) / 1e9, fp32_med / med, len(times[name]), note))
    return out, (M, N, K)


# ----------------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------------


def render(title: str, headers: list[str], rows: list[list[str]], right: set[int], caption: str = "") -> None:
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        fmt = lambda cells: "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
        print(title)
        print(fmt(headers))
        print("  ".join("-" * w for w in widths))
        for r in rows:
            print(fmt(r))
        if caption:
            print(caption)
        return
    table = Table(title=title, box=box.SIMPLE_HEAVY)
    for i, h in enumerate(headers):
        table.add_column(Text(h), justify="right" if i in right else "left", no_wrap=i == 0)
    for r in rows:
        table.add_row(*(Text(c) for c in r))  # Text: no rich markup, so "[...]" prints as written
    width = sum(max(len(h), *(len(r[i]) for r in rows)) + 3 for i, h in enumerate(headers)) + 4
    console = Console(width=max(120, width), highlight=False)
    console.print(table)
    if caption:
        console.print(Text(caption))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    p.add_argument("--per-round", type=int, default=3, help="timed calls per system per round")
    p.add_argument("--gemm-rounds", type=int, default=15)
    p.add_argument("--skip", action="append", default=[], help="skip systems whose name contains this (repeatable)")
    p.add_argument("--no-extras", action="store_true", help="leave out EXTRA_SYSTEMS rows")
    p.add_argument("--no-gemm", action="store_true")
    p.add_argument("--quick", action="store_true", help="5 rounds x 2 calls, no extras: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.per_round, args.gemm_rounds, args.no_extras = 5, 2, 5, True

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    started = time.time()
    load_start = loadavg()
    header = [
        f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"cpu:     {cpu_model()}  ({os.cpu_count()} logical CPUs visible; flags: {cpu_flags()})",
        f"threads: torch.set_num_threads({args.threads}); ONNX Runtime intra_op_num_threads={args.threads}",
        f"stack:   {versions()}",
        f"load average at start: {load_start}",
    ]
    try:
        if float(load_start.split()[0]) > (os.cpu_count() or 1) * 0.75:
            header.append("WARNING: the machine is busy: absolute latencies are inflated; read the ratios")
    except ValueError:
        pass
    print("\n".join(header), flush=True)

    from qcompile.zoo.evaluate import compare, logits
    from qcompile.zoo.images import calibration_set, evaluation_set
    from qcompile.zoo.mobilenet_v2 import mobilenet_v2

    model = mobilenet_v2().eval()
    views, labels, originals = evaluation_set()
    cal = calibration_set()
    x = views[:1].clone()
    print(f"model: MobileNetV2 (torchvision ImageNet weights), input {list(x.shape)}; "
          f"calibration {len(cal)} images; evaluation {len(views)} views of {len(originals)} labelled photos", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="qcompile-bench-"))
    thr = args.threads
    builders: list[tuple[str, Callable, int | None, str]] = [
        ("PyTorch eager fp32", lambda m, x, c: build_eager(m, x, c, thr), None, ""),
        ("torch.compile inductor fp32", lambda m, x, c: build_inductor_fp32(m, x, c, thr), None, "inductor with freezing=True"),
        ("torchao PT2E int8 + inductor", lambda m, x, c: build_torchao_pt2e(m, x, c, thr), None,
         "prepare_pt2e/convert_pt2e with X86InductorQuantizer (default config), then torch.compile with freezing=True"),
    ]
    if not has_vnni():
        # Without VNNI, oneDNN's u8 x s8 kernels use vpmaddubsw, whose int16 pair sums saturate with 8-bit
        # activations; PyTorch's answer is 7-bit activations (reduce_range). Show both.
        builders.append((
            "torchao PT2E int8 + inductor, reduce_range",
            lambda m, x, c: build_torchao_pt2e(m, x, c, thr, reduce_range=True), None,
            "the same with get_default_x86_inductor_quantization_config(reduce_range=True): 7-bit activations",
        ))
    builders += [
        ("ONNX Runtime fp32", lambda m, x, c: build_ort_fp32(m, x, c, thr, workdir), None, ""),
        ("ONNX Runtime int8 QDQ", lambda m, x, c: build_ort_int8(m, x, c, thr, workdir), None,
         "quantize_static: QuantFormat.QDQ, per-channel s8 weights, u8 activations, MinMax calibration"),
    ]
    if not has_vnni():
        builders.append((
            "ONNX Runtime int8 QDQ, reduce_range",
            lambda m, x, c: build_ort_int8(m, x, c, thr, workdir, reduce_range=True), None,
            "the same with quantize_static(reduce_range=True): 7-bit weights",
        ))
    if not args.no_extras:
        for name, extra in EXTRA_SYSTEMS.items():
            builders.append((name, extra.factory, extra.timed_runs, extra.note))
    builders = [b for b in builders if b[0] == "PyTorch eager fp32" or not any(s in b[0] for s in args.skip)]

    systems: list[System] = []
    for name, build, timed_runs, note in builders:
        s = System(name, timed_runs=timed_runs, note=note)
        print(f"build: {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            s.fn = build(copy.deepcopy(model), x, cal)
            with torch.no_grad():
                s.fn(x)
        except Exception as exc:  # noqa: BLE001
            s.fn, s.error = None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            traceback.print_exc(limit=3)
        s.build_s = time.perf_counter() - t0
        print(f"  {'FAILED: ' + s.error if s.error else 'ok'} ({s.build_s:.1f} s)", flush=True)
        systems.append(s)

    # Accuracy first (it also warms every system up).
    float_logits = None
    for s in systems:
        if s.fn is None:
            continue
        t0 = time.perf_counter()
        try:
            out = logits(s.fn, views).float()
        except Exception as exc:  # noqa: BLE001
            s.fn, s.error = None, f"at evaluation: {type(exc).__name__}: {exc}"[:200]
            continue
        if float_logits is None:
            float_logits = out
        res = compare(float_logits, out, labels, originals)
        s.agreement, s.top1 = res.agreement, res.top1_quant
        print(f"accuracy: {s.name}: agreement {s.agreement:.2f}, top-1 {s.top1:.2f} ({time.perf_counter() - t0:.1f} s)", flush=True)

    print(f"timing: {args.rounds} interleaved rounds x {args.per_round} timed calls (after 50 ms of warm-up) per system", flush=True)
    interleaved_latency(systems, x, args.rounds, args.per_round)

    gemm = None
    if not args.no_gemm:
        print(f"timing: GEMM {args.gemm_rounds} interleaved rounds x {args.per_round} calls", flush=True)
        gemm = gemm_table(thr, args.gemm_rounds, args.per_round)
    load_end = loadavg()

    # ---- tables ----
    print()
    print("\n".join(header))
    print(f"load average at end:   {load_end}   (total run {time.time() - started:.0f} s)")
    print()
    eager = systems[0]
    eager_med = statistics.median(eager.times_ms) if eager.times_ms else float("nan")
    rows = []
    for s in systems:
        label = s.name
        if s.fn is None or not s.times_ms:
            rows.append([label, "-", "-", "-", "-", "-", "-", f"{s.build_s:.0f}", f"FAILED: {s.error}"])
            continue
        med = statistics.median(s.times_ms)
        q1, q3 = quartiles(s.times_ms)
        few = s.timed_runs is not None
        rows.append([
            label,
            f"{med:.1f}" + ("*" if few else ""),
            f"{q1:.1f}-{q3:.1f}",
            str(len(s.times_ms)),
            f"{eager_med / med:.2f}x",
            f"{statistics.median(s.round_ratios):.2f}x",
            f"{s.agreement:.2f}" if s.agreement is not None else "-",
            f"{s.top1:.2f}" if s.top1 is not None else "-",
            f"{s.build_s:.0f}",
        ])
    headers = ["system", "median ms", "IQR ms", "runs", "x eager", "x eager per round",
               "agree w/ fp32 (100 views)", "top-1 (20 photos)", "build s"]
    if any(s.fn is None for s in systems):
        headers.append("error")
        rows = [r + [""] if len(r) == 9 else r for r in rows]
    caption = (
        f"batch 1, 3x224x224 fp32 input, {args.threads} threads. Timing interleaved over {args.rounds} rounds "
        f"(shuffled order, 50 ms of warm-up calls + {args.per_round} timed calls per system per round).\n"
        "x eager = eager median / system median (speed-up); x eager per round = median over rounds of that ratio "
        "within one round (robust to drift).\n"
        "* = timed with fewer runs (one call per round, no warm-up): slow by design, not comparable in spread.\n"
        "Agreement: argmax equal to eager fp32's over the 100 evaluation views; top-1 against the labels of the 20 "
        "original photos. ONNX Runtime timings include the torch<->numpy copy of the input and output."
        + "".join(f"\n  {s.name}: {s.note}" for s in systems if s.note)
        + ("" if has_vnni() else "\nThis CPU has no VNNI: u8 x s8 int8 dot products go through vpmaddubsw, whose int16 "
           "intermediate can saturate: hence the reduce_range rows.")
    )
    render("MobileNetV2, batch 1, 224x224", headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8}, caption=caption)

    if gemm is not None:
        grow, (M, N, K) = gemm
        rows2 = []
        for name, med, gops, ratio, n, note in grow:
            if med is None:
                rows2.append([name, "-", "-", "-", "0", note])
            else:
                rows2.append([name, f"{med:.2f}", f"{gops:.0f}", f"{ratio:.2f}x", str(n), note])
        print()
        render(
            f"GEMM {M}x{N}x{K} (y = x W^T + b), {args.threads} threads",
            ["kernel", "median (ms)", "G(FL)OPS", "speed-up vs fp32", "runs", "notes"], rows2, right={1, 2, 3, 4},
            caption=f"GOPS = 2*M*N*K / median time. Interleaved over {args.gemm_rounds} rounds (1 warm-up + "
                    f"{args.per_round} timed calls each). Activation quantization is not timed for int8 "
                    "(input already quint8).",
        )
    shutil.rmtree(workdir, ignore_errors=True)
    failed = [s for s in systems if s.error]
    if failed:
        print("\nFailures:")
        for s in failed:
            print(f"  {s.name}: {s.error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
