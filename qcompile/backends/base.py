"""Backend protocol and registry: a backend turns the integer graph into something callable."""
from __future__ import annotations

import importlib
import inspect
from typing import Callable, Protocol

from torch import fx

from ..errors import UsageError


class Backend(Protocol):
    name: str

    def build(self, gm: fx.GraphModule) -> Callable:
        """Return a callable taking the flat input tensors and returning the flat output tuple.
        If the callable has `save(directory)`, CompiledModel.save calls it, and the backend's
        `load(directory, gm)` (when present) restores it without rebuilding. A backend may also offer
        `slower_than_float(gm, callable) -> {layer: reason}`: compile() then recompiles once with those
        layers kept float (QuantConfig.float_layers)."""
        ...


_BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str):
    def deco(cls):
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
        if hasattr(target, "build") and hasattr(target, "name"):
            if options:
                raise UsageError(f"options {', '.join(sorted(options))} given with a backend object: set them on the object")
            return target
        raise TypeError(f"target must be a backend name or a backend object, got {type(target).__name__}")
    if target not in _BACKENDS:
        raise UsageError(f"unknown target {target!r}; available: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[target](**options)
