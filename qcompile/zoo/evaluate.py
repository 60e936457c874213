"""Accuracy of a compiled MobileNetV2 against fp32 on the packaged photos: the numbers the README quotes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .images import calibration_set, evaluation_set
from .mobilenet_v2 import mobilenet_v2


@dataclass
class ImageNetResult:
    views: int
    agreement: float  # top-1 agreement with fp32 over all views
    top1_float: float  # on the 20 labelled photos
    top1_quant: float
    images_below_float: int  # labelled photos fp32 gets right and the quantized model gets wrong

    def __str__(self) -> str:
        return (
            f"top-1 agreement with fp32 over {self.views} views: {self.agreement:.3f}\n"
            f"top-1 on the 20 labelled photos: fp32 {self.top1_float:.2f}, quantized {self.top1_quant:.2f} "
            f"({self.images_below_float} image(s) fp32 gets right that the quantized model misses)"
        )


def logits(fn, x: torch.Tensor, batch: int = 1) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def compare(float_logits: torch.Tensor, quant_logits: torch.Tensor, labels, originals) -> ImageNetResult:
    fa, qa = float_logits.argmax(1), quant_logits.argmax(1)
    f_ok, q_ok = fa[originals] == labels[originals], qa[originals] == labels[originals]
    return ImageNetResult(
        views=len(fa),
        agreement=(fa == qa).float().mean().item(),
        top1_float=f_ok.float().mean().item(),
        top1_quant=q_ok.float().mean().item(),
        images_below_float=int((f_ok & ~q_ok).sum()),
    )


def mobilenet_setup():
    """(model, example inputs, calibration batches, evaluation views, labels, indices of the originals)."""
    model = mobilenet_v2()
    x, labels, originals = evaluation_set()
    return model, (x[:1],), calibration_set(), x, labels, originals
