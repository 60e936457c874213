"""Backends declare what they can do (Backend.capabilities), and their runners implement it."""
import pytest
import torch

import qcompile
from qcompile.backends import (
    Backend,
    Capability,
    get_backend,
    register_backend,
    registered_backends,
)
from qcompile.backends.base import RUNNER_PROTOCOLS
from qcompile.errors import ArtifactError, UsageError


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU()).eval()
    x = torch.randn(2, 16)
    return model, (x,), [x, torch.randn(2, 16)]


@pytest.mark.parametrize("target", ["reference", "x86", "cuda", "arm"])
def test_runners_implement_the_declared_capabilities(linear, target, request):
    if target == "arm":
        request.getfixturevalue("cross_toolchain")
    model, example, calibration = linear
    compiled = qcompile.compile(model, example, target=target, calibration=calibration, progress=False)
    backend = get_backend(target)
    runner = compiled._runner
    for capability in backend.capabilities:
        protocol = RUNNER_PROTOCOLS.get(capability)
        assert protocol is None or isinstance(runner, protocol), (target, capability)
    for capability, protocol in RUNNER_PROTOCOLS.items():
        if capability not in backend.capabilities:
            assert not isinstance(runner, protocol), f"{target} implements {capability} without declaring it"


def test_every_registered_backend_declares_capabilities():
    for name in registered_backends():
        backend = get_backend(name)
        assert isinstance(backend.capabilities, frozenset)
        assert all(isinstance(c, Capability) for c in backend.capabilities)


def test_an_undeclared_capability_is_a_clear_error(linear):
    model, example, calibration = linear
    compiled = qcompile.compile(model, example, calibration=calibration, progress=False)
    with pytest.raises(UsageError, match="does not time itself"):
        compiled.benchmark()


def test_a_backend_must_derive_from_the_protocol():
    class NotABackend:
        name = "nope"

        def build(self, gm):
            return gm

    with pytest.raises(TypeError, match="does not derive from qcompile.backends.Backend"):
        register_backend("nope")(NotABackend)
    with pytest.raises(TypeError, match="Backend"):
        get_backend(NotABackend())


def test_a_user_backend_gets_the_defaults(linear):
    class Doubling(Backend):
        name = "doubling"

        def build(self, gm):
            return lambda *inputs: tuple(2 * o for o in gm(*inputs))

    model, example, calibration = linear
    reference = qcompile.compile(model, example, calibration=calibration, progress=False)
    doubled = qcompile.compile(model, example, target=Doubling(), calibration=calibration, progress=False)
    assert torch.equal(doubled(*example), 2 * reference(*example))
    with pytest.raises(UsageError, match="dynamic_shapes"):
        qcompile.compile(model, example, target=Doubling(), calibration=calibration, progress=False,
                         dynamic_shapes=({0: torch.export.Dim("batch")},))


@pytest.mark.parametrize("target", ["x86", "cuda", "arm"])
def test_a_library_backend_says_which_backend_an_artifact_lacks(tmp_path, target):
    with pytest.raises(ArtifactError, match=f"has no model.so: it was not saved by the '{target}' backend"):
        get_backend(target).load(tmp_path, None)
