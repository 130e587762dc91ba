"""Chooses each kernel's implementation by device: fast paths on CUDA, the reference on CPU.

The only module that decides, and the only one that imports the Triton kernels (lazily, so
CPU-only installs never import triton); layers call through here.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.kernels import grouped_moe, reference


def moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """On CUDA a path with no host sync (graph-capturable): for a few tokens the Triton GEMV
    kernels, else grouped GEMMs in bf16, else every expert on every token (small fp32 test
    models). On CPU the reference."""
    if x.is_cuda:
        small = _triton_moe()
        if small is not None and x.dtype == torch.bfloat16 and x.shape[0] <= small.MAX_TOKENS:
            return small.moe_experts_small_batch(x, weights, expert_ids, w13, w2)
        if grouped_moe.is_available() and x.dtype == torch.bfloat16:
            return grouped_moe.moe_experts_grouped(x, weights, expert_ids, w13, w2)
        return reference.moe_experts_dense(x, weights, expert_ids, w13, w2)
    return reference.moe_experts(x, weights, expert_ids, w13, w2)


def decode_graphs_supported(head_dim: int) -> bool:
    """Whether a decode step can be captured: its attention must run in the Triton kernel."""
    kernel = _triton_attention()
    return kernel is not None and kernel.supports(head_dim)


@functools.cache
def _triton_moe() -> ModuleType | None:
    try:
        from m2agent.engine.kernels import moe_triton
    except ImportError:
        return None
    return moe_triton


@functools.cache
def _triton_prefill() -> ModuleType | None:
    try:
        from m2agent.engine.kernels import prefill_attention_triton
    except ImportError:
        return None
    return prefill_attention_triton


@functools.cache
def _triton_attention() -> ModuleType | None:
    try:
        from m2agent.engine.kernels import paged_attention_triton
    except ImportError:
        return None
    return paged_attention_triton


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    batch: ForwardBatch,
    scale: float,
) -> torch.Tensor:
    """On CUDA, Triton: the decode kernel for decode batches (graph-capturable: tensors
    only), the prefill kernel for anything else. On CPU (or an unsupported head size) the
    reference, one sequence at a time."""
    if q.is_cuda:
        kernel = _triton_attention()
        if kernel is not None and kernel.supports(q.shape[-1]):
            if batch.is_decode:
                return kernel.paged_decode_attention(
                    q, k_cache, v_cache, batch.block_tables, batch.seq_lens, scale
                )
            prefill = _triton_prefill()
            if prefill is not None:
                return prefill.paged_prefill_attention(
                    q, k_cache, v_cache, batch.block_tables, batch.seq_lens,
                    batch.query_start, batch.max_query_len, scale,
                )  # fmt: skip
    return reference.paged_attention(
        q,
        k_cache,
        v_cache,
        batch.query_lens_list,
        batch.seq_lens_list,
        batch.block_tables_list,
        scale,
    )
