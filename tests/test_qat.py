"""Quantization-aware training: the fake-quant graph trains, and converts to the integer graph."""
import torch

import qcompile
from tests.models import TinyResNet


def test_qat_trains_and_converts_to_integer_graph():
    torch.manual_seed(0)
    teacher = TinyResNet().eval()
    data = [torch.randn(4, 3, 32, 32) for _ in range(6)]
    qat = qcompile.prepare_qat(teacher, (data[0],), calibration=data[:2], progress=False)
    params = dict(qat.named_parameters())
    assert len(params) >= 12  # conv/linear weights and folded biases are trainable
    before = {k: v.detach().clone() for k, v in params.items()}

    opt = torch.optim.Adam(qat.parameters(), lr=0.01)
    target = torch.randn(4, 10)  # move the outputs somewhere new: the loss must fall through fake-quant
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(qat(data[0]), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert any(not torch.equal(before[k], v) for k, v in qat.named_parameters())

    cm = qcompile.convert_qat(qat, verify_each=True)
    targets = {str(n.target) for n in cm.graph_module.graph.nodes}
    assert "qcompile.conv2d_int.default" in targets and "aten.fake_quantize_per_tensor_affine.default" not in targets
    with torch.no_grad():
        trained, compiled = qat(data[0]), cm(data[0])
    assert torch.nn.functional.cosine_similarity(trained.flatten(), compiled.flatten(), dim=0) > 0.99
    assert all(p.requires_grad for p in teacher.parameters())  # the teacher was not touched
