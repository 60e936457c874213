"""Backend protocol and registry: a backend turns the integer graph into something callable."""
from __future__ import annotations

import importlib
from typing import Callable, Protocol

from torch import fx

from ..errors import UsageError


class Backend(Protocol):
    name: str

    def build(self, gm: fx.GraphModule) -> Callable:
        """Return a callable taking the flat input tensors and returning the flat output tuple.
        If the callable has `save(directory)`, CompiledModel.save calls it, and the backend's
        `load(directory, gm)` (when present) restores it without rebuilding."""
        ...


_BACKENDS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str):
    def deco(factory):
        _BACKENDS[name] = factory
        return factory
    return deco


def register_lazy_backend(name: str, module: str, attr: str) -> None:
    """Register a backend whose module is imported only when the backend is first asked for."""

    def factory():
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"target {name!r} needs {exc.name or 'its dependencies'} (pip install apache-tvm==0.27.0.post1)") from exc
        return getattr(mod, attr)()

    _BACKENDS[name] = factory


def get_backend(target) -> Backend:
    if not isinstance(target, str):
        if hasattr(target, "build") and hasattr(target, "name"):
            return target
        raise TypeError(f"target must be a backend name or a backend object, got {type(target).__name__}")
    if target not in _BACKENDS:
        raise UsageError(f"unknown target {target!r}; available: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[target]()
