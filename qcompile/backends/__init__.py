from . import reference  # noqa: F401  (registers "reference")
from .base import (
    Backend,
    Benchmarking,
    Capability,
    Profiling,
    Runner,
    Saving,
    Tuned,
    get_backend,
    register_backend,
    register_lazy_backend,
    registered_backends,
)

# TVM imports take a while and are optional for the reference backend: load on first use.
register_lazy_backend("x86", "qcompile.backends.tvm.x86.backend", "X86Backend")
register_lazy_backend("cuda", "qcompile.backends.tvm.cuda.backend", "CudaBackend")
for _variant, _factory in (("arm", "ArmBackend"), ("arm-a55", "ArmA55Backend"), ("arm-i8mm", "ArmI8mmBackend")):
    register_lazy_backend(_variant, "qcompile.backends.tvm.arm.backend", _factory)

__all__ = ["Backend", "Benchmarking", "Capability", "Profiling", "Runner", "Saving", "Tuned", "get_backend",
           "register_backend", "registered_backends"]
