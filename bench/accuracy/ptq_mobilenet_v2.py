"""Post-training int8 accuracy of MobileNetV2 (real weights): qcompile's activation-range methods against
torchao's PT2E (X86InductorQuantizer) and ONNX Runtime (static QDQ, when installed), side by side on the
same calibration and evaluation data.

    .venv/bin/python bench/accuracy/ptq_mobilenet_v2.py [--protocols held-out,tuning] [--systems ...]

Two protocols (qcompile/zoo/images.py), each calibrated in batches of 4:
- tuning: the README's own sets (scikit-image/scikit-learn crops; 100 views of the 20 labelled photos),
  where methods and defaults are chosen;
- held-out: crops of photos 10-19 for calibration, 120 other views (rotated, zoomed, recoloured) of photos
  0-9 for evaluation: no image in common with the tuning sets or with each other.
Accuracy is top-1 agreement with fp32 (and top-1 against the labels) and the logits' SQNR against fp32
(10 log10 of signal over error energy, over all views: it separates methods that agreement, counted in
whole views, cannot). qcompile rows are compiled for x86
(bit-exact with the reference backend, tests/test_mobilenet_v2.py) so that 220 evaluations take seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from datetime import datetime, timezone
from typing import Callable

import torch
from rich.console import Console
from rich.table import Table

import qcompile
from qcompile.zoo.images import (
    calibration_set,
    evaluation_set,
    held_out_calibration,
    held_out_evaluation,
)
from qcompile.zoo.mobilenet_v2 import mobilenet_v2

BATCH = 4
CORRECTED = "fold-batch-norm,choose-bitwidth,calibrate,correct-bias,insert-qdq,fuse-qdq,fold-scales"


def _tuning() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    crops = torch.cat(calibration_set())[:32]
    xs, labels, _ = evaluation_set()
    return list(crops.split(BATCH)), xs, labels


def _held_out() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    return (held_out_calibration(BATCH), *held_out_evaluation())


PROTOCOLS: dict[str, Callable] = {"held-out": _held_out, "tuning": _tuning}


def _qcompile(pipeline: str | None = None, **config) -> Callable:
    def build(model, calibration, example):
        cm = qcompile.compile(model, (example,), calibration=calibration, progress=False, target="x86",
                              config=qcompile.QuantConfig(**config), pipeline=pipeline)
        return lambda xs: torch.cat([cm(x.unsqueeze(0)) for x in xs])
    return build


def _pt2e(model, calibration, example):
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    exported = torch.export.export(model, (calibration[0],)).module()  # static batch of 4
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for batch in calibration:
        prepared(batch)
    converted = convert_pt2e(prepared)
    return lambda xs: torch.cat([converted(xs[i:i + BATCH]) for i in range(0, len(xs), BATCH)])


def _onnx_runtime(model, calibration, example):
    import tempfile

    import numpy as np
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    folder = tempfile.mkdtemp()
    fp32, int8 = f"{folder}/m.onnx", f"{folder}/m8.onnx"
    torch.onnx.export(model, (example,), fp32, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {"x": b.numpy()}

    quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    session = ort.InferenceSession(int8, providers=["CPUExecutionProvider"])
    return lambda xs: torch.from_numpy(np.concatenate([session.run(None, {"x": x[None].numpy()})[0] for x in xs]))


# name -> build(model, calibration batches, example [1, 3, 224, 224]) -> run(views) -> logits
SYSTEMS: dict[str, Callable] = {
    "qcompile min-max": _qcompile(method="minmax"),
    "qcompile histogram (least L2)": _qcompile(method="histogram"),
    "qcompile percentile 99.9": _qcompile(method="percentile", percentile=99.9),
    "qcompile percentile 99.99": _qcompile(method="percentile", percentile=99.99),
    "qcompile percentile 99.999": _qcompile(method="percentile", percentile=99.999),
    "qcompile entropy": _qcompile(method="entropy"),
    "qcompile min-max + correct-bias": _qcompile(CORRECTED, method="minmax"),
    "qcompile percentile 99.99 + correct-bias": _qcompile(CORRECTED, method="percentile"),
    "qcompile histogram + correct-bias": _qcompile(CORRECTED, method="histogram"),
    "qcompile W4A8 (every conv and linear 4-bit)": _qcompile(bits=4),
    "qcompile mixed 8/4/float at 6 bits average": _qcompile(bits="mixed", budget=6.0),
    "qcompile mixed at 6 bits + correct-bias": _qcompile(CORRECTED, bits="mixed", budget=6.0),
    "qcompile W4A8 + correct-bias": _qcompile(CORRECTED, bits=4),
    "qcompile W4A8 percentile 99.99 + correct-bias": _qcompile(CORRECTED, bits=4, method="percentile"),
    "torchao PT2E X86InductorQuantizer": _pt2e,
    "ONNX Runtime QDQ min-max": _onnx_runtime,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    torch.manual_seed(0)
    model = mobilenet_v2().eval()
    console = Console(width=160)
    for proto in args.protocols.split(","):
        calibration, xs, labels = PROTOCOLS[proto]()
        with torch.no_grad():
            fp32 = model(xs)
        reference = fp32.argmax(1)
        table = Table(title=f"MobileNetV2 int8, protocol {proto}: {sum(len(b) for b in calibration)} calibration "
                            f"images in batches of {BATCH}, {len(xs)} evaluation views")
        for col in ("system", "agreement with fp32", "logit SQNR dB", "top-1", "build s", "error"):
            table.add_column(col)
        table.add_row("PyTorch fp32", "1.000", "", f"{(reference == labels).float().mean():.3f}", "", "")
        for name in args.systems.split(","):
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    run = SYSTEMS[name](model, calibration, xs[:1])
                    out = run(xs)
            except Exception as exc:  # a peer that is not installed is a row that says so
                table.add_row(name, "-", "-", "-", "", f"{type(exc).__name__}: {str(exc)[:60]}")
                continue
            top, sqnr = out.argmax(1), 10 * torch.log10(fp32.pow(2).sum() / (out - fp32).pow(2).sum())
            table.add_row(name, f"{(top == reference).float().mean():.3f}", f"{sqnr:.2f}", f"{(top == labels).float().mean():.3f}",
                          f"{time.perf_counter() - t0:.0f}", "")
        console.print(table)
    console.print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
                  f"torch {torch.__version__}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
