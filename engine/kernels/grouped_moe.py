"""MoE experts with grouped GEMMs: tokens sorted by expert, one grouped matmul per projection.

No host synchronisation (so it can be captured in a CUDA graph later). Same maths as
`reference.moe_experts`, which the tests compare it with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def is_available() -> bool:
    return _grouped_mm is not None


def moe_experts_grouped(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """x [T, C]; weights, expert_ids [T, K]; w13 [E, 2I, C]; w2 [E, C, I] -> [T, C]."""
    if _grouped_mm is None:
        raise RuntimeError("this torch build has no grouped_mm")
    num_tokens, top_k = expert_ids.shape
    flat = expert_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    token_of_row = order // top_k
    rows = x[token_of_row]  # [T*K, C], grouped by expert
    # Rows per expert without a host sync (bincount would read the max back to size its output).
    counts = torch.zeros(w13.shape[0], dtype=torch.int32, device=x.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
    offsets = torch.cumsum(counts, 0, dtype=torch.int32)
    gate, up = _grouped_mm(rows, w13.transpose(-2, -1), offs=offsets).chunk(2, dim=-1)
    y = _grouped_mm(F.silu(gate) * up, w2.transpose(-2, -1), offs=offsets)
    y = y.float() * weights.reshape(-1)[order, None]
    out = torch.zeros((num_tokens, x.shape[1]), dtype=torch.float32, device=x.device)
    return out.index_add_(0, token_of_row, y).to(x.dtype)
