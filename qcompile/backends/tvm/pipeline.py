"""The build steps every TVM target shares, and the files of a saved library-backed model.

The lowering (relax_lowering.py) gives one Relax module; `group` puts each accumulator with its epilogue
into one Relax function, `fuse` makes each group one TIR kernel; each target then schedules the kernels
(cpu/pipeline.py, cuda/pipeline.py) and builds them. `LibraryBackend.load` restores a saved model of any
target from its library and its kernels' call sites without rebuilding.
"""
from __future__ import annotations

from pathlib import Path

import tvm
from torch import fx
from tvm import relax

from ...errors import ArtifactError
from . import profile

LIBRARY = "model.so"
KERNELS = "kernels.json"  # the library's kernel calls and the layers each computes, for the profile


def group(mod: tvm.IRModule) -> tuple[tvm.IRModule, tvm.IRModule]:
    """Group each accumulator with its epilogue (bias, requantize, residual add) into one Relax function.
    Returns the module before and after grouping: the profile reads kernels' layers from the pair."""
    before = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),  # float islands arrive as high-level Relax ops
        # Reshapes become views before fusion: fused into a neighbour (two GEMMs' row/NHWC reshapes, a
        # residual add's) they would be copies.
        relax.transform.RewriteDataflowReshape(),
        relax.transform.AnnotateTIROpPattern(),
    ])(mod)
    return before, relax.transform.FuseOps()(before)


def fuse(grouped: tvm.IRModule) -> tvm.IRModule:
    """Each group of `group` as one TIR kernel, ready for a target's schedule rules."""
    return tvm.transform.Sequential([relax.transform.FuseTIR(), relax.transform.DeadCodeElimination()])(grouped)


class LibraryBackend:
    """A backend whose saved model is one exported TVM library (LIBRARY) beside its kernels' call sites
    (KERNELS). Subclasses say how a loaded library runs (`runner_for`)."""

    name: str

    def runner_for(self, library: Path, sites: list[profile.CallSite], directory: Path):
        raise NotImplementedError

    def load(self, directory: Path, gm: fx.GraphModule):
        directory = Path(directory)
        library = directory / LIBRARY
        if not library.is_file():
            raise ArtifactError(f"{directory} has no {LIBRARY}: it was not saved by the {self.name!r} backend")
        return self.runner_for(library, profile.load_sites(directory / KERNELS), directory)
