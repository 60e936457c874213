"""Float attention models (aten.scaled_dot_product_attention) in every form of torch's signature: test_attention.py
compares them with the reference on x86; cuda/cases.py takes two of them into the GPU cases."""
import torch
import torch.nn.functional as F
from torch import nn


class Sdpa(nn.Module):
    """Two query heads of 16 over a [batch, seq, 32] input; `kv_heads` key/value heads; `rank` 3 folds the
    heads into the batch."""

    def __init__(self, mask=None, kv_heads=2, rank=4, **options):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(32, 32), nn.Linear(32, 16 * kv_heads), nn.Linear(32, 16 * kv_heads)
        self.mask, self.options, self.kv_heads, self.rank = mask, options, kv_heads, rank

    def forward(self, x):
        b, s, _ = x.shape
        q = self.q(x).view(b, s, 2, 16).transpose(1, 2)
        k, v = (t.view(b, s, self.kv_heads, 16).transpose(1, 2) for t in (self.k(x), self.v(x)))
        if self.rank == 3:
            q, k, v = (t.reshape(b * 2, s, 16) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, **self.options)
        return y.reshape(b, 2, s, 16).transpose(1, 2).reshape(b, s, 32)


def sdpa_variants() -> dict[str, Sdpa]:
    """One model per form of the signature, made from torch.manual_seed(0) in this order (the GPU case
    "sdpa_bool_mask" is the "bool_mask_2d" one: its weights depend on the order)."""
    torch.manual_seed(0)
    keep = torch.rand(24, 24) > 0.3
    keep[:, 0] = True  # no row fully masked
    return {
        "default": Sdpa(),
        "scale": Sdpa(scale=0.1),  # TVM's importer ignores it
        "bool_mask_2d": Sdpa(keep),  # TVM's importer takes 4-D float masks only
        "float_mask_4d": Sdpa(torch.randn(2, 1, 24, 24)),
        "causal": Sdpa(is_causal=True),
        "grouped_query": Sdpa(kv_heads=1, enable_gqa=True),  # TVM's importer drops enable_gqa
        "rank_3": Sdpa(rank=3),
    }
