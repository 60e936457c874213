"""qcompile: a quantizing compiler for PyTorch models."""
from .api import CompiledModel, compile, load
from .backends import get_backend, register_backend
from .errors import ArtifactError, FloatWeightsWarning, UsageError
from .frontend.capture import CaptureError
from .ir.qspec import QParams, QSpec
from .passes import Pass, PassContext, PassResult, register_pass
from .passes.base import at
from .passes.manager import DEFAULT_PIPELINE, PassError
from .qat import QATModel, convert_qat, prepare_qat
from .quant.config import QuantConfig
from .quant.math import choose_qparams, dequantize, quantize

__all__ = [
    "ArtifactError", "at", "FloatWeightsWarning", "QATModel", "convert_qat", "prepare_qat", "CaptureError", "CompiledModel", "DEFAULT_PIPELINE", "Pass", "PassContext", "PassError",
    "PassResult", "QParams", "QSpec", "QuantConfig", "choose_qparams", "compile", "dequantize", "get_backend",
    "load", "quantize", "register_backend", "register_pass", "UsageError",
]
