"""Runs a pipeline of passes under the instruments; shapes are re-propagated after each change."""
from __future__ import annotations

import copy
import time

from torch import fx

from ..errors import UsageError
from ..ir import shapes
from .base import Pass, PassContext, PassResult, pipeline_string
from .instruments import Instruments

DEFAULT_PIPELINE = "fold-batch-norm,choose-bitwidth,calibrate,insert-qdq,fuse-qdq,fold-scales"


class PassError(RuntimeError):
    """A pass raised; `reproducer` is the folder with its input graph and the pipeline."""

    def __init__(self, message: str, reproducer):
        super().__init__(message)
        self.reproducer = reproducer


def _checked(p: Pass, result) -> PassResult:
    if not isinstance(result, PassResult) or not isinstance(result.gm, fx.GraphModule):
        raise UsageError(f"pass {p.name!r} ({type(p).__module__}.{type(p).__qualname__}).run returned "
                         f"{type(result).__name__}; a pass returns PassResult(gm, changed) with gm an fx.GraphModule")
    return result


def run_pipeline(gm: fx.GraphModule, passes: list[Pass], ctx: PassContext, instruments: Instruments) -> fx.GraphModule:
    pipeline = pipeline_string(passes)
    shapes.propagate(gm, ctx.example_inputs)  # passes may rely on meta["val"] of every node
    instruments.start(pipeline, gm)
    for p in passes:
        before = copy.deepcopy(gm)
        t0 = time.perf_counter()
        try:
            result = _checked(p, p.run(gm, ctx))
            gm = result.gm
            if result.changed:
                shapes.propagate(gm, ctx.example_inputs)
        except UsageError:
            raise
        except Exception as exc:
            path = instruments.failed(p.name, before, pipeline, exc, ctx)
            raise PassError(f"pass {p.name!r} failed: {type(exc).__name__}: {exc} (reproducer: {path})", path) from exc
        ms = (time.perf_counter() - t0) * 1e3
        instruments.after(p.name, gm, result.changed, ms, dict(ctx.stats.get(p.name, {})))
    return gm
