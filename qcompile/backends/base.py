"""Backend protocol and registry: a backend turns the integer graph into something callable (a runner).

What a backend and its runners can do beyond running is declared, not probed: `Backend.capabilities`
names each `Capability`, and a runner of a backend that declares one implements that capability's
protocol (tests/backends/test_capabilities.py checks every registered backend).
"""
from __future__ import annotations

import enum
import importlib
import inspect
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import fx

from ..errors import UsageError


class Capability(enum.Enum):
    PROFILE = "profile"  # runner.profile(*inputs): µs per kernel with its layers (Profiling)
    BENCHMARK = "benchmark"  # runner.benchmark(*inputs, number=, repeat=) (Benchmarking)
    SAVE = "save"  # runner.save(directory) writes what Backend.load needs besides the graph (Saving)
    TUNE = "tune"  # runner.tuning: what a tuned build measured and reused, or None (Tuned)
    DYNAMIC_SHAPES = "dynamic_shapes"  # dims torch.export leaves free stay free in the built model
    REMOTE = "remote"  # the model runs on another device (a board or an emulator, through RPC)
    NATIVE_LIBRARY = "native_library"  # a saved model is native code: loading it runs that code


class Runner(Protocol):
    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The flat outputs of the model on its flat input tensors."""
        ...


@runtime_checkable
class Profiling(Runner, Protocol):
    def profile(self, *inputs: torch.Tensor) -> list[dict]:
        """One run's kernel calls: µs and the layers each computes (empty where nothing can be timed)."""
        ...


@runtime_checkable
class Benchmarking(Runner, Protocol):
    def benchmark(self, *inputs: torch.Tensor, number: int, repeat: int):
        """A BenchmarkResult of `repeat` timings of `number` calls each."""
        ...


@runtime_checkable
class Saving(Runner, Protocol):
    def save(self, directory: Path) -> None:
        ...


@runtime_checkable
class Tuned(Runner, Protocol):
    tuning: dict | None


# The protocol a runner implements for each capability that needs one.
RUNNER_PROTOCOLS: dict[Capability, type] = {Capability.PROFILE: Profiling, Capability.BENCHMARK: Benchmarking,
                                            Capability.SAVE: Saving, Capability.TUNE: Tuned}


class Backend(Protocol):
    """A code generator for the integer graph. Classes derive from it for the defaults of `load` (rebuild
    from the saved graph), `slower_than_float` (nothing) and `capabilities` (none)."""

    name: str
    capabilities: frozenset[Capability] = frozenset()

    def build(self, gm: fx.GraphModule) -> Runner:
        ...

    def load(self, directory: Path, gm: fx.GraphModule) -> Runner:
        """The runner of a model saved in `directory` whose integer graph is `gm`."""
        return self.build(gm)

    def slower_than_float(self, gm: fx.GraphModule, runner: Runner) -> dict[str, str]:
        """layer -> reason, for integer layers that should stay float: compile() then recompiles once with
        those layers kept float (QuantConfig.float_layers)."""
        return {}


_BACKENDS: dict[str, Callable[..., Backend]] = {}


def derives_from_backend(cls) -> bool:
    """Backends name the protocol as a base (for its defaults): a nominal check, not a structural one."""
    return isinstance(cls, type) and Backend in cls.__mro__


def register_backend(name: str):
    def deco(cls):
        if not derives_from_backend(cls):
            raise TypeError(f"backend {name!r}: {cls!r} does not derive from qcompile.backends.Backend")
        _BACKENDS[name] = lambda **options: _construct(name, cls, options)
        return cls
    return deco


def register_lazy_backend(name: str, module: str, attr: str) -> None:
    """Register a backend whose module is imported only when the backend is first asked for."""

    def factory(**options):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"target {name!r} needs {exc.name or 'its dependencies'} (pip install apache-tvm==0.27.0.post1)") from exc
        return _construct(name, getattr(mod, attr), options)

    _BACKENDS[name] = factory


def registered_backends() -> list[str]:
    return sorted(_BACKENDS)


def _construct(name: str, cls, options: dict):
    try:
        inspect.signature(cls).bind(**options)
    except TypeError:
        allowed = [p for p, v in inspect.signature(cls).parameters.items() if v.kind == v.KEYWORD_ONLY]
        raise UsageError(f"target {name!r} has no option(s) {', '.join(sorted(options))}; "
                         f"its options: {', '.join(allowed) or 'none'}") from None
    return cls(**options)


def get_backend(target, **options) -> Backend:
    """The backend named `target`, built with `options` (keyword arguments of compile() that no
    stage before the backend takes, e.g. tune=True for x86)."""
    if not isinstance(target, str):
        if derives_from_backend(type(target)):
            if options:
                raise UsageError(f"options {', '.join(sorted(options))} given with a backend object: set them on the object")
            return target
        raise TypeError(f"target must be a backend name or a Backend (qcompile.backends.Backend), got {type(target).__name__}")
    if target not in _BACKENDS:
        raise UsageError(f"unknown target {target!r}; available: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[target](**options)
