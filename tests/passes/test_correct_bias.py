"""correct-bias: the mean output shift that weight rounding causes is measured on calibration data and
taken out of the bias."""
import torch
from torch import nn

import qcompile

CORRECTED = "fold-batch-norm,choose-bitwidth,calibrate,correct-bias,insert-qdq,fuse-qdq,fold-scales"


def _model() -> nn.Module:
    torch.manual_seed(0)
    # A depthwise conv (9 weights per channel: large systematic rounding error at 4 bits), a conv without
    # bias and a linear: each kind the pass corrects.
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8, padding=1),
                         nn.ReLU(), nn.Conv2d(8, 6, 1, bias=False), nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()


def _mean_shift(cm, model, xs) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([cm(x) - model(x) for x in xs]).mean(dim=(0, 1, 3, 4)).abs()  # per output channel


def test_bias_correction_removes_most_of_the_mean_output_shift():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.Conv2d(8, 16, 1, bias=False)).eval()
    g = torch.Generator().manual_seed(1)
    # Inputs with a non-zero mean: the shift is E[(W_q - W) x], which a zero-mean input would hide.
    calibration = [torch.rand(1, 8, 8, 8, generator=g) * 2 for _ in range(32)]
    held_out = [torch.rand(1, 8, 8, 8, generator=g) * 2 for _ in range(32)]
    config = qcompile.QuantConfig(bits=4)
    plain = qcompile.compile(model, (held_out[0],), calibration=calibration, config=config, progress=False)
    corrected = qcompile.compile(model, (held_out[0],), calibration=calibration, config=config, progress=False,
                                 pipeline=CORRECTED)
    assert corrected.report().extra["stats"]["correct-bias"]["corrected layers"] == 2
    with torch.no_grad():
        scale = torch.stack([model(x) for x in held_out]).abs().mean()
    before, after = _mean_shift(plain, model, held_out), _mean_shift(corrected, model, held_out)
    assert before.mean() > 0.01 * scale  # 4-bit rounding moves the mean visibly
    assert after.mean() < 0.3 * before.mean(), (before, after)


def test_bias_correction_corrects_every_kind_and_leaves_the_float_model_and_x86_exactness_alone():
    model = _model()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(1, 3, 8, 8)
    calibration = [torch.rand(1, 3, 8, 8) for _ in range(8)]
    reference = qcompile.compile(model, (x,), calibration=calibration, progress=False, pipeline=CORRECTED)
    assert reference.report().extra["stats"]["correct-bias"]["corrected layers"] == 4
    x86 = qcompile.compile(model, (x,), calibration=calibration, progress=False, pipeline=CORRECTED, target="x86")
    assert torch.equal(x86(x), reference(x))
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
