""""Never slower than float": each integer conv/linear layer's kernels against a float32 version of it.

The yardstick is what this backend itself would run if the layer stayed float: the same float32
conv2d / linear (shapes, strides, groups) through TVM's own Relax op, legalized, fused with its bias,
scheduled by the same rule and timed the same way (one VM run, instrument hook) as the integer model.
The dequantize/quantize a float layer needs at its borders are not counted, so a layer falls back only
when its integer kernels lose to the float op alone.
"""
from __future__ import annotations

import torch
import tvm
from torch import fx
from tvm import relax

from ....ir.rewrite import constant
from ..var_names import var_name

qc = torch.ops.qcompile


def _conv(bb: relax.BlockBuilder, node: fx.Node, x, w, b) -> relax.Expr:
    stride, padding, dilation, groups = node.args[5:9]
    y = bb.emit(relax.op.nn.conv2d(x, w, list(stride), list(padding), list(dilation), groups), var_name(node))
    return relax.op.add(y, relax.op.reshape(b, (1, -1, 1, 1)))


def _linear(bb: relax.BlockBuilder, node: fx.Node, x, w, b) -> relax.Expr:
    return relax.op.linear(x, w, b)


_FLOAT_OPS = {qc.conv2d_int.default: _conv, qc.linear_int.default: _linear}


def _operands(gm: fx.GraphModule, node: fx.Node) -> list[list[int]]:
    x, w = node.args[:2]
    return [list(x.meta["val"].shape), list(constant(gm, w).shape), [int(constant(gm, w).shape[0])]]


def float_module(gm: fx.GraphModule) -> tuple[tvm.IRModule, list[torch.Tensor]] | None:
    """One Relax `main` running a float32 copy of every integer conv/linear on its own zero inputs
    (None when the graph has none)."""
    accs = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _FLOAT_OPS]
    if not accs:
        return None
    shapes = [s for n in accs for s in _operands(gm, n)]
    params = [relax.Var(f"p{i}", relax.TensorType(s, "float32")) for i, s in enumerate(shapes)]
    bb = relax.BlockBuilder()
    with bb.function("main", params):
        with bb.dataflow():
            outs = [
                bb.emit(_FLOAT_OPS[n.target](bb, n, *params[3 * i:3 * i + 3]), var_name(n))
                for i, n in enumerate(accs)
            ]
            result = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get(), [torch.zeros(s) for s in shapes]


def layer_times(kernels: list[dict]) -> dict[str, float]:
    """µs per layer from a profile; a kernel shared by several layers counts a share for each."""
    times: dict[str, float] = {}
    for k in kernels:
        for name in k["layers"]:
            times[name] = times.get(name, 0.0) + k["us"] / len(k["layers"])
    return times


def verdicts(int_us: dict[str, float], float_us: dict[str, float], min_speedup: float) -> dict[str, str]:
    """layer -> why it falls back, for every layer whose integer kernels are not `min_speedup` times faster."""
    out = {}
    for name, f in float_us.items():
        i = int_us.get(name)
        if i is None or i * min_speedup <= f:
            continue
        if i > f:
            out[name] = f"int8 kernel {i / f:.1f}x slower than float ({i:.0f} µs vs {f:.0f} µs)"
        else:
            out[name] = f"int8 kernel only {f / i:.2f}x faster than float ({i:.0f} µs vs {f:.0f} µs; {min_speedup:g}x required)"
    return out
