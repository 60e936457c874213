from .base import Pass, PassContext, PassResult, as_passes, parse_pipeline, register_pass, registered_passes
from . import calibrate, choose_bitwidth, fold_batch_norm, fold_scales, fuse_qdq, insert_qdq  # noqa: F401  (register)

__all__ = ["Pass", "PassContext", "PassResult", "as_passes", "parse_pipeline", "register_pass", "registered_passes"]
