from . import (  # noqa: F401  (register)
    calibrate,
    choose_bitwidth,
    correct_bias,
    fold_batch_norm,
    fold_scales,
    fuse_qdq,
    insert_qdq,
)
from .base import (
    Pass,
    PassContext,
    PassResult,
    as_passes,
    parse_pipeline,
    register_pass,
    registered_passes,
)

__all__ = ["Pass", "PassContext", "PassResult", "as_passes", "parse_pipeline", "register_pass", "registered_passes"]
