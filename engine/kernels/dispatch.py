"""Chooses each kernel's implementation by device: fast paths on CUDA, the reference on CPU.

The only module that decides; layers call through here.
"""

from __future__ import annotations

import torch

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.kernels import grouped_moe, reference


def moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    w1: torch.Tensor,
    w3: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    if x.is_cuda and grouped_moe.is_available() and x.dtype == torch.bfloat16:
        return grouped_moe.moe_experts_grouped(x, weights, expert_ids, w1, w3, w2)
    return reference.moe_experts(x, weights, expert_ids, w1, w3, w2)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: ForwardBatch,
    scale: float,
) -> torch.Tensor:
    return reference.paged_attention(
        q,
        k_cache,
        v_cache,
        batch.query_lens_list,
        batch.seq_lens_list,
        batch.block_tables_list,
        scale,
    )
