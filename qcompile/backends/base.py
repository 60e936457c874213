"""Backend protocol and registry: a backend turns the integer graph into something callable."""
from __future__ import annotations

from typing import Callable, Protocol

from torch import fx

from ..errors import UsageError


class Backend(Protocol):
    name: str

    def build(self, gm: fx.GraphModule) -> Callable:
        """Return a callable taking the flat input tensors and returning the flat output tuple."""
        ...


_BACKENDS: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str):
    def deco(factory):
        _BACKENDS[name] = factory
        return factory
    return deco


def get_backend(target) -> Backend:
    if not isinstance(target, str):
        if hasattr(target, "build") and hasattr(target, "name"):
            return target
        raise TypeError(f"target must be a backend name or a backend object, got {type(target).__name__}")
    if target not in _BACKENDS:
        raise UsageError(f"unknown target {target!r}; available: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[target]()
