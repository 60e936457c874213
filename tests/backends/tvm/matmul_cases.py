"""qc.matmul_int (activation x activation, batched) as a bare integer graph, with the odd shapes and zero points
both the CPU kernel's tests (cpu/test_matmul_kernel.py) and the CUDA lowering's (cuda/test_matmul_lowering.py)
check bit for bit against the graph itself."""
import torch
from torch import fx

qc = torch.ops.qcompile


def matmul_graph(shape_a, shape_b, dtype_a, dtype_b, a_zp, b_zp, requant=None) -> fx.GraphModule:
    """An integer graph `matmul_int(a, b)`, optionally followed by a requantize (mult, shift, out_zp)."""
    g, root = fx.Graph(), torch.nn.Module()
    a, b = g.placeholder("a"), g.placeholder("b")
    a.meta["val"], b.meta["val"] = torch.zeros(shape_a, dtype=dtype_a), torch.zeros(shape_b, dtype=dtype_b)
    out = g.call_function(qc.matmul_int.default, (a, b, a_zp, b_zp))
    out.meta["val"] = qc.matmul_int(a.meta["val"], b.meta["val"], a_zp, b_zp)
    if requant is not None:
        mult, shift, out_zp = requant
        root.register_buffer("mult", torch.tensor([mult], dtype=torch.int32))
        root.register_buffer("shift", torch.tensor([shift], dtype=torch.int32))
        acc = out
        out = g.call_function(qc.requantize_fixed.default,
                              (acc, 0, g.get_attr("mult"), g.get_attr("shift"), -1, out_zp, 0, 255, torch.uint8))
        out.meta["val"] = torch.zeros(acc.meta["val"].shape, dtype=torch.uint8)
    g.output((out,))
    return fx.GraphModule(root, g)


def random_operand(shape, dtype, gen):
    """Uniform over the whole range of uint8 or int8."""
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(lo, hi, shape, generator=gen).to(dtype)


U8, I8 = torch.uint8, torch.int8
CASES = [  # shape a, shape b, dtypes, zero points, requantize
    ((2, 12, 16, 32), (2, 12, 32, 16), U8, U8, 134, 137, None),  # Q.K^T of MiniLM
    ((2, 12, 16, 16), (2, 12, 16, 32), U8, U8, 0, 128, (1234567890, 40, 118)),  # P.V + requantize
    ((2, 3, 5, 7), (2, 3, 7, 9), U8, U8, 3, 200, None),  # M, N odd, K not a multiple of 4
    ((4, 1, 3, 1), (5, 1, 6), I8, U8, -3, 17, None),  # K = 1, batch broadcast both ways, ranks differ
    ((3, 5), (2, 5, 13), U8, I8, 255, -128, (1500000000, 38, 9)),  # 2-D a broadcast over b's batch
    ((1, 33, 8), (3, 8, 1), I8, I8, 0, 0, None),  # N = 1, a broadcast, no zero points
    ((2, 1, 9, 12), (1, 3, 12, 20), I8, I8, 5, -7, (1073741824, 33, 0)),  # shift 33, ragged N
]
