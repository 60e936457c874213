"""Canonical spellings of weighted ops, so that each has one integer lowering to match.

Users and libraries write the same layer many ways: GPT-2's `Conv1D` is `addmm(bias, x, W)` with W stored
[in, out]; a hand-written projection is `x @ W` or `torch.mm`; Wav2Vec2's feature extractor is `conv1d`.
Each is rewritten here, at capture, into the form the quantization rules know (`linear` with a [out, in]
weight, `conv2d` with a height of 1), with new constants holding the re-laid-out weights, so that every
backend quantizes and lowers them without a rule of its own. A rewrite applies only where it is exact:
a constant 2-D weight, unit alpha/beta, integer padding.
"""
from __future__ import annotations

import operator
from typing import Callable

import torch
from torch import fx

from ..ir.rewrite import Rewriter, constant

aten = torch.ops.aten
STAGE = "capture"  # the provenance name of the nodes created here


def _args(node: fx.Node, n: int) -> tuple:
    """The node's first n positional arguments, None for the trailing ones export left out."""
    return (*node.args, *[None] * (n - len(node.args)))


def _const_2d(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        t = constant(gm, node)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() == 2:
            return t
    return None


def _bias_of(gm: fx.GraphModule, node, out_features: int) -> bool:
    """A constant [out] bias (what addmm's `input` is for a Linear-like layer)."""
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        return False
    t = constant(gm, node)
    return t.is_floating_point() and tuple(t.shape) == (out_features,)


def _as_linear(rw: Rewriter, node: fx.Node, x: fx.Node, weight_in_out: torch.Tensor, w_node: fx.Node, bias) -> fx.Node:
    w = rw.const(weight_in_out.t().contiguous(), f"{w_node.target}_out_in", node)
    return rw.call(aten.linear.default, (x, w, bias), node, represents=node)


def _addmm(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    bias, x, w_node = node.args[:3]
    w = _const_2d(rw.gm, w_node)
    unit = node.kwargs.get("beta", 1) == 1 and node.kwargs.get("alpha", 1) == 1
    if w is None or not unit or not _bias_of(rw.gm, bias, w.shape[1]):
        return None
    return _as_linear(rw, node, x, w, w_node, bias)


def _mm(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """x @ W with a constant W: `mm`, and `matmul` with any leading dims on x (linear's own semantics)."""
    x, w_node = node.args[:2]
    w = _const_2d(rw.gm, w_node)
    x_rank = getattr(x.meta.get("val"), "ndim", 0) if isinstance(x, fx.Node) else 0
    if w is None or x_rank < 2:
        return None
    return _as_linear(rw, node, x, w, w_node, None)


def _conv1d(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """conv1d as a conv2d of height 1: the input and weight get a unit dim 2, the output loses it."""
    x, w_node, bias, stride, padding, dilation, groups = _args(node, 7)
    if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr") or isinstance(padding, str):
        return None  # padding="same" / "valid" (aten.conv1d.padding) keeps its own op
    w = rw.const(constant(rw.gm, w_node).unsqueeze(2), f"{w_node.target}_2d", node)
    x2 = rw.call(aten.unsqueeze.default, (x, 2), node)
    conv = rw.call(aten.conv2d.default, (x2, w, bias, [1, *(stride or [1])], [0, *(padding or [0])],
                                         [1, *(dilation or [1])], groups or 1), node, represents=node)
    return rw.call(aten.squeeze.dim, (conv, 2), node)


def _einsum(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """einsum of an activation with a constant matrix that contracts the activation's last index and puts
    the matrix's other index last ("bld,de->ble", "...k,nk->...n"): a linear."""
    equation, operands = node.args[0], node.args[1]
    if len(operands) != 2 or "->" not in equation:
        return None
    inputs, out = equation.replace(" ", "").split("->")
    (a, b), (x, w_node) = inputs.split(","), operands
    w = _const_2d(rw.gm, w_node)
    if w is None or len(b) != 2 or not a or a[-1] not in b or a[-1] in out or set(a) & set(b) != {a[-1]}:
        return None
    other = b.replace(a[-1], "")
    if out != a[:-1] + other:
        return None
    in_out = w if b[0] == a[-1] else w.t()  # [k, n]
    return _as_linear(rw, node, x, in_out, w_node, None)


def _diff(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """diff (transformers' mask code) as the difference of two slices, after prepend/append: ops every
    backend has. Booleans differ where they are unequal, as torch.diff defines for them."""
    x, n, dim, prepend, append = _args(node, 5)
    n, dim = n if n is not None else 1, dim if dim is not None else -1
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if val is None:
        return None
    parts = [p for p in (prepend, x, append) if p is not None]
    y = rw.call(aten.cat.default, (parts, dim), node) if len(parts) > 1 else x
    for _ in range(n):
        later, earlier = rw.call(aten.slice.Tensor, (y, dim, 1, _END), node), rw.call(aten.slice.Tensor, (y, dim, 0, -1), node)
        y = _compare_bools(rw, node, aten.ne.Tensor, later, earlier) if val.dtype == torch.bool else \
            rw.call(aten.sub.Tensor, (later, earlier), node)
    return y


def _compare_bools(rw: Rewriter, node: fx.Node, op, a: fx.Node, b: fx.Node) -> fx.Node:
    """eq/ne of two boolean tensors as a comparison of their uint8 casts: TVM's LLVM code generator
    refuses an equality of booleans (transformers' mask code has them)."""
    return rw.call(op, (rw.cast(a, torch.uint8, node), rw.cast(b, torch.uint8, node)), node, represents=node)


def _cumsum_of_bools(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """cumsum counts booleans as int64 in torch; TVM's importer keeps them boolean (transformers' position
    ids from an attention mask): the cast made explicit."""
    x = node.args[0]
    if not isinstance(x, fx.Node) or getattr(x.meta.get("val"), "dtype", None) != torch.bool:
        return None
    cast = rw.cast(x, node.kwargs.get("dtype") or torch.int64, node)
    return rw.call(aten.cumsum.default, (cast, *node.args[1:]), node, represents=node)


def _bool_comparison(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    a, b = node.args[:2]
    dtypes = {getattr(x.meta.get("val"), "dtype", None) for x in (a, b) if isinstance(x, fx.Node)}
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or dtypes != {torch.bool}:
        return None
    return _compare_bools(rw, node, node.target, a, b)


_END = 2**63 - 1  # slice to the end, as torch.export writes it


def _transposed_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """A transposed conv's [in, out/g, kh, kw] weight as the [out, in/g, kh, kw] weight of the direct conv
    computing it: channels swapped within each group, taps flipped."""
    cin, cout_g, kh, kw = w.shape
    w = w.reshape(groups, cin // groups, cout_g, kh, kw).transpose(1, 2).reshape(groups * cout_g, cin // groups, kh, kw)
    return w.flip(2, 3).contiguous()


def _zero_inserted(rw: Rewriter, node: fx.Node, x: fx.Node, shape: list[int], stride: list[int]) -> fx.Node:
    """x [n, c, h, w] with stride-1 zeros between its pixels: [n, c, (h-1)*sh+1, (w-1)*sw+1]. Built from
    unsqueeze, pad, reshape and slice, which all stay integer (the zeros become the zero point's code)."""
    _, c, h, w = shape
    sh, sw = stride
    y = rw.call(aten.unsqueeze.default, (rw.call(aten.unsqueeze.default, (x, 3), node), 5), node)
    y = rw.call(aten.constant_pad_nd.default, (y, [0, sw - 1, 0, 0, 0, sh - 1], 0.0), node)
    y = rw.call(aten.reshape.default, (y, [-1, c, h * sh, w * sw]), node)
    y = rw.call(aten.slice.Tensor, (y, 2, 0, (h - 1) * sh + 1), node)
    return rw.call(aten.slice.Tensor, (y, 3, 0, (w - 1) * sw + 1), node)


def _as_direct_conv(rw: Rewriter, node: fx.Node, x: fx.Node, shape: list[int], w_node: fx.Node, bias,
                    stride, padding, output_padding, groups, dilation) -> fx.Node | None:
    """conv_transpose2d as conv2d over the zero-inserted input, padded by dilation*(k-1)-padding
    (+output_padding at the end), with the transposed weight."""
    w = constant(rw.gm, w_node)
    kh, kw = w.shape[2:]
    before = [d * (k - 1) - p for d, k, p in zip(dilation, (kh, kw), padding)]
    if min(before) < 0 or any(not isinstance(v, int) for v in shape):
        return None  # a padding larger than the kernel crops: left to the float op
    y = _zero_inserted(rw, node, x, shape, stride)
    pads = [before[1], before[1] + output_padding[1], before[0], before[0] + output_padding[0]]
    y = rw.call(aten.constant_pad_nd.default, (y, pads, 0.0), node)
    direct = rw.const(_transposed_weight(w, groups), f"{w_node.target}_direct", node)
    return rw.call(aten.conv2d.default, (y, direct, bias, [1, 1], [0, 0], list(dilation), groups), node, represents=node)


def _per_dim(v, n: int, default: int) -> list[int]:
    """A conv argument as one value per spatial dim: a list of n (or of 1, repeated), an int, or None (the default)."""
    if isinstance(v, (list, tuple)) and v:
        return list(v) * (n // len(v))
    return [v if isinstance(v, int) else default] * n


def _conv_transpose2d(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    x, w_node, bias, stride, padding, output_padding, groups, dilation = _args(node, 8)
    if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr") or "val" not in x.meta:
        return None
    return _as_direct_conv(rw, node, x, list(x.meta["val"].shape), w_node, bias, _per_dim(stride, 2, 1),
                           _per_dim(padding, 2, 0), _per_dim(output_padding, 2, 0), groups or 1, _per_dim(dilation, 2, 1))


def _conv_transpose1d(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """conv_transpose1d as the 2-D form of height 1 (then as a direct conv2d)."""
    x, w_node, bias, stride, padding, output_padding, groups, dilation = _args(node, 8)
    if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr") or "val" not in x.meta:
        return None
    one = lambda v, d: [1 if d == 1 else 0, _per_dim(v, 1, d)[0]]  # noqa: E731
    n, c, length = x.meta["val"].shape
    w2 = rw.const(constant(rw.gm, w_node).unsqueeze(2), f"{w_node.target}_2d", node)
    x2 = rw.call(aten.unsqueeze.default, (x, 2), node)
    conv = _as_direct_conv(rw, node, x2, [n, c, 1, length], w2, bias, one(stride, 1), one(padding, 0),
                           one(output_padding, 0), groups or 1, one(dilation, 1))
    return None if conv is None else rw.call(aten.squeeze.dim, (conv, 2), node)


def _conv3d(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """conv3d as one conv2d over depth windows: the (zero-padded) input's kd depth slices under each
    output depth are gathered into the channels ([n, c, d, h, w] -> [n * od, c * kd, h, w], index_select with
    a constant index, a data-movement op), the weight [o, c/g, kd, kh, kw] becomes [o, c/g * kd, kh, kw]
    in the same channel order (groups stay contiguous), and the output [n * od, o, oh, ow] is laid back as
    [n, o, od, oh, ow]. The gather copies the input kd times: the im2col of the depth axis."""
    x, w_node, bias, stride, padding, dilation, groups = _args(node, 7)
    val = x.meta.get("val") if isinstance(x, fx.Node) else None
    if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr") or isinstance(padding, str) or val is None:
        return None
    _, c, d, h, w = val.shape
    (sd, *s2), (pd, *p2), (dd, *d2) = _per_dim(stride, 3, 1), _per_dim(padding, 3, 0), _per_dim(dilation, 3, 1)
    weight = constant(rw.gm, w_node)
    o, kd = weight.shape[0], weight.shape[2]
    od = (d + 2 * pd - dd * (kd - 1) - 1) // sd + 1 if isinstance(d, int) else None
    if not all(isinstance(v, int) for v in (c, h, w)) or od is None or od < 1:
        return None
    xp = rw.call(aten.constant_pad_nd.default, (x, [0, 0, 0, 0, pd, pd], 0.0), node) if pd else x
    index = rw.const(torch.tensor([j * sd + i * dd for j in range(od) for i in range(kd)]), f"{node.name}_depth_windows", node)
    y = rw.call(aten.index_select.default, (xp, 2, index), node)
    y = rw.call(aten.reshape.default, (y, [-1, c, od, kd, h, w]), node)
    y = rw.call(aten.permute.default, (y, [0, 2, 1, 3, 4, 5]), node)
    y = rw.call(aten.reshape.default, (y, [-1, c * kd, h, w]), node)
    w2 = rw.const(weight.reshape(o, -1, *weight.shape[3:]).contiguous(), f"{w_node.target}_2d", node)
    y = rw.call(aten.conv2d.default, (y, w2, bias, s2, p2, d2, groups or 1), node, represents=node)
    oh, ow = node.meta["val"].shape[3:]
    y = rw.call(aten.reshape.default, (y, [-1, od, o, oh, ow]), node)
    return rw.call(aten.permute.default, (y, [0, 2, 1, 3, 4]), node)


def _fixed_bag_size(offsets) -> int | None:
    """The bag size L where offsets are arange(0, N, L), what torch.export writes for a [bags, L] input."""
    if isinstance(offsets, fx.Node) and offsets.target == aten.arange.start_step:
        start, _, step = offsets.args[:3]
        if start == 0 and isinstance(step, int) and step > 0:
            return step
    return None


_BAG_REDUCTIONS = {0: aten.sum.dim_IntList, 1: aten.mean.dim, 2: aten.amax.default}  # EmbeddingBag's mode codes


def _embedding_bag(rw: Rewriter, node: fx.Node) -> tuple | None:
    """embedding_bag over bags of one size (a [bags, L] input) as an embedding, so that the table is stored
    and gathered as integers, and a sum / mean / max over each bag's L rows. Bags of free sizes (an offsets
    input) keep the float op: their segment reduction has no lowering on every backend yet."""
    weight, indices, offsets, _, mode, _, per_sample, last_offset, padding_idx = _args(node, 9)
    bag = _fixed_bag_size(offsets)
    if bag is None or last_offset or padding_idx not in (None, -1) or not isinstance(weight, fx.Node):
        return None
    dim = weight.meta["val"].shape[1]
    rows = rw.call(aten.embedding.default, (weight, indices), node)
    rows = rw.call(aten.reshape.default, (rows, [-1, bag, dim]), node)
    if per_sample is not None:
        rows = rw.call(aten.mul.Tensor, (rows, rw.call(aten.reshape.default, (per_sample, [-1, bag, 1]), node)), node)
    return rw.call(_BAG_REDUCTIONS[mode], (rows, [1]), node, represents=node), None, None, None


def _select(rw: Rewriter, node: fx.Node) -> fx.Node | None:
    """select with a negative index counted from the front (TVM's gather reads a negative index out of
    bounds, without a check)."""
    x, dim, index = node.args
    size = x.meta["val"].shape[dim] if isinstance(x, fx.Node) and "val" in x.meta else None
    if not isinstance(index, int) or index >= 0 or not isinstance(size, int):
        return None
    return rw.call(aten.select.int, (x, dim, index + size), node, represents=node)


# target -> the rewrite: the node standing for the op's value (for an op of several outputs, a tuple with
# None for the outputs the rewrite does not compute), or None where no exact canonical form applies.
CANONICAL: dict[object, Callable[[Rewriter, fx.Node], fx.Node | tuple | None]] = {
    aten.addmm.default: _addmm,
    aten.mm.default: _mm,
    aten.matmul.default: _mm,
    aten.conv1d.default: _conv1d,
    aten.conv3d.default: _conv3d,
    aten.embedding_bag.padding_idx: _embedding_bag,
    aten.select.int: _select,
    aten.einsum.default: _einsum,
    aten.diff.default: _diff,
    aten.eq.Tensor: _bool_comparison,
    aten.cumsum.default: _cumsum_of_bools,
    aten.ne.Tensor: _bool_comparison,
    aten.conv_transpose2d.input: _conv_transpose2d,
    aten.conv_transpose1d.default: _conv_transpose1d,
}


_GATHERS = frozenset({aten.embedding.default, aten.index_select.default, aten.gather.default})


def _foldable(node: fx.Node) -> bool:
    """A pure ATen op computing from the module's constants only (weight_norm's g * v / |v|, a transpose of
    a weight): its result is a constant too, which the quantization rules then see as a weight. Gathers
    from a table (position embeddings at fixed positions) are left alone: the table quantizes as a table."""
    schema = getattr(node.target, "_schema", None)
    inputs = node.all_input_nodes
    return (
        node.op == "call_function" and schema is not None and bool(inputs) and node.target not in _GATHERS
        and all(n.op == "get_attr" for n in inputs) and not schema.is_mutable
        and torch.Tag.nondeterministic_seeded not in getattr(node.target, "tags", ())
    )


def _fold_constants(rw: Rewriter) -> int:
    folded = 0
    for node in list(rw.graph.nodes):
        if not _foldable(node):
            continue
        with torch.no_grad():
            value = node.target(*fx.node.map_arg(node.args, lambda n: constant(rw.gm, n)),
                                **fx.node.map_arg(node.kwargs, lambda n: constant(rw.gm, n)))
        inputs = sum(constant(rw.gm, n).numel() for n in node.all_input_nodes)
        if isinstance(value, torch.Tensor) and value.numel() <= 4 * inputs:  # never materialise a broadcast
            node.replace_all_uses_with(rw.const(value, node.name, node))
            folded += 1
    return folded


def _replace_outputs(node: fx.Node, outputs: tuple) -> bool:
    """Point the getitem users of a multi-output node at the rewrite's outputs; False (graph untouched,
    the rewrite's nodes left dead) when one that is read was not computed."""
    users = [u for u in node.users if u.target is operator.getitem and u.users]
    if any(u.target is not operator.getitem for u in node.users) or any(outputs[u.args[1]] is None for u in users):
        return False
    for u in users:
        u.replace_all_uses_with(outputs[u.args[1]])
    return True


def canonicalize(gm: fx.GraphModule) -> int:
    """Fold computations on constants, then rewrite every op of CANONICAL that has an exact canonical form;
    returns how many nodes changed."""
    rw = Rewriter(gm, STAGE)
    done = _fold_constants(rw)
    for node in list(gm.graph.nodes):
        fn = CANONICAL.get(node.target) if node.op == "call_function" else None
        new = fn(rw, node) if fn else None
        if isinstance(new, tuple) and _replace_outputs(node, new):
            done += 1
        elif isinstance(new, fx.Node):
            node.replace_all_uses_with(new)
            done += 1
    if done:
        rw.finish()
    return done
