from .base import Backend, get_backend, register_backend, register_lazy_backend
from . import reference  # noqa: F401  (registers "reference")

# TVM imports take a while and are optional for the reference backend: load on first use.
register_lazy_backend("x86", "qcompile.backends.tvm.x86", "X86Backend")

__all__ = ["Backend", "get_backend", "register_backend"]
