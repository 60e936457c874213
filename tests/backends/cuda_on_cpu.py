"""The CUDA lowering's Relax module (its TE definitions: batched matmuls, convs with [cout, kh, kw, cin]
weights, zero-point terms, float attention) built for this CPU: its arithmetic checked against the
reference without a GPU."""
import tvm
from torch import fx

from qcompile.backends.tvm import cuda_build
from qcompile.backends.tvm.lower import to_relax
from qcompile.backends.tvm.x86 import TVMRunner, host_target, optimize


def cuda_lowering(gm: fx.GraphModule) -> tvm.IRModule:
    return to_relax(gm, target=cuda_build.target(cuda_build.DEFAULT_ARCH))


def built_for_cpu(mod: tvm.IRModule) -> TVMRunner:
    target = host_target()
    return TVMRunner(tvm.compile(optimize(mod, target), target=target), [])
