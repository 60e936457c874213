"""A compiled model owns its constants: editing the float model afterwards changes nothing in it, and
compiling or calling it never writes into the user's model."""
import pytest
import torch

import qcompile


class Norms(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.embedding = torch.nn.Embedding(10, 8)

    def forward(self, x, ids):
        return self.norm(self.linear(x)) + self.embedding(ids)


class Counter(Norms):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x, ids):
        self.calls += 1
        return super().forward(x, ids)


def test_compiled_model_owns_its_constants_and_leaves_the_users_model_alone():
    torch.manual_seed(0)
    model = Norms().eval()
    x, ids = torch.randn(2, 8), torch.tensor([1, 2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    compiled = qcompile.compile(model, (x, ids), calibration=[(x, ids), (torch.randn(2, 8), ids)], progress=False)
    before = compiled(x, ids)
    for _ in range(3):
        compiled(x, ids)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "compile or a call wrote into the model"
    with torch.no_grad():
        model.norm.weight.mul_(3)
        model.embedding.weight.zero_()
        model.linear.weight.zero_()
    assert torch.equal(compiled(x, ids), before)


def test_a_forward_that_updates_its_buffers_is_refused_and_the_model_left_alone():
    model = Counter().eval()
    x, ids = torch.randn(2, 8), torch.tensor([1, 2])
    with pytest.raises(qcompile.UsageError, match=r"Counter.forward updates its buffer\(s\) calls in place "
                       r"\(e.g. self.calls \+= 1\); a compiled model is stateless"):
        qcompile.compile(model, (x, ids), calibration=[(x, ids)], progress=False)
    assert int(model.calls) == 0 and model.training is False
