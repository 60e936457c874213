"""A pipeline is checked before anything runs: empty, misordered or repeated passes, and a custom pass that
returns the wrong thing, are errors that say what is wrong (they used to return a float model silently)."""
import pytest
import torch

import qcompile
from qcompile.passes.base import as_passes, check_order
from qcompile.qat import CONVERT_PIPELINE, TRAINED_FACTS
from tests.models import ConvBnRelu

X = torch.randn(2, 3, 8, 8)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ConvBnRelu().eval()


@pytest.mark.parametrize("pipeline, message", [
    ("", r"the pipeline is empty"),
    ("insert-qdq,calibrate", r"pass 'insert-qdq' needs qparams \('calibrate' before it\)"),
    ("calibrate,fold-batch-norm,insert-qdq,fuse-qdq",
     r"pass 'insert-qdq' needs qparams .*'fold-batch-norm' runs after it and invalidates them"),
    ("calibrate,choose-bitwidth,insert-qdq", r"'choose-bitwidth' runs after it and invalidates them"),
    ("calibrate,insert-qdq,insert-qdq,fuse-qdq,fold-scales", r"pass 'insert-qdq' appears twice"),
    ("calibrate,calibrate,insert-qdq", r"pass 'calibrate' appears twice"),
    ("calibrate,insert-qdq,fold-scales", r"pass 'fold-scales' needs integer-ops \('fuse-qdq' before it\)"),
])
def test_bad_pipelines_are_refused_before_capture(model, pipeline, message):
    with pytest.raises(qcompile.UsageError, match=message):
        qcompile.compile(model, (X,), calibration=[X], pipeline=pipeline, progress=False)


def test_good_pipelines_pass_the_check():
    check_order(as_passes(qcompile.DEFAULT_PIPELINE))
    check_order(as_passes("fold-batch-norm,fold-batch-norm,calibrate,insert-qdq"))  # idempotent passes may repeat
    check_order(as_passes(CONVERT_PIPELINE), TRAINED_FACTS)  # QAT's convert starts from the trained q/dq graph
    with pytest.raises(qcompile.UsageError, match="needs qdq"):
        check_order(as_passes(CONVERT_PIPELINE))


class ReturnsTheGraph(qcompile.Pass):
    name = "returns-the-graph"

    def run(self, gm, ctx):
        return gm  # should be PassResult(gm, changed)


def test_a_custom_pass_returning_the_wrong_type_is_named(model):
    with pytest.raises(qcompile.UsageError, match=r"pass 'returns-the-graph' \(.*ReturnsTheGraph\)\.run returned "
                       r"GraphModule; a pass returns PassResult\(gm, changed\)"):
        qcompile.compile(model, (X,), calibration=[X], passes=[ReturnsTheGraph()], progress=False)
