"""`make demo`: quantize the real MobileNetV2 to int8, run it on the reference backend, measure it."""
from __future__ import annotations

import tempfile
import time
import warnings

import torch

import qcompile

from .evaluate import compare, logits, mobilenet_setup


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model, example, calibration, x, labels, originals = mobilenet_setup()
    print(f"MobileNetV2 (torchvision ImageNet weights); {len(calibration)} calibration images "
          f"(scikit-image/scikit-learn photos and crops); {len(x)} evaluation views of 20 labelled photos")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as dump:
        cm = qcompile.compile(model, example, target="reference", calibration=calibration, bits=8, dump_dir=dump)
        print(f"compiled in {time.perf_counter() - t0:.1f} s (dumps of every pass were written to a temporary folder)")
    print(cm.report())
    result = compare(logits(model, x, 20), logits(cm, x), labels, originals)
    print(result)
    print(f"weights {cm.report().compression:.2f}x smaller than fp32")
    with tempfile.TemporaryDirectory() as d:
        cm.save(d)
        again = qcompile.load(d)
        same = torch.equal(again(x[:2][:1]), cm(x[:1]))
        print(f"saved and reloaded artifact gives identical output: {same}")


if __name__ == "__main__":
    main()
