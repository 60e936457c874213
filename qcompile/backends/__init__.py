from .base import Backend, get_backend, register_backend
from . import reference  # noqa: F401  (registers "reference")

__all__ = ["Backend", "get_backend", "register_backend"]
