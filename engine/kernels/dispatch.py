"""Chooses each kernel's implementation by device: fast paths on CUDA, the reference on CPU.

The only module that decides, and the only one that imports the Triton kernels (lazily, so
CPU-only installs never import triton); layers call through here.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch
import torch.nn.functional as F

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.kernels import grouped_moe, reference
from m2agent.engine.kernels.partial_sums import PartialSums, PendingNorm, materialize
from m2agent.engine.kernels.reference import ExpertWeights

# Arrival counters (int32, zero between launches) that the CUDA kernels whose programs hand
# the last step to the last one to finish need: a router's (one per token block) and an
# RMSNorm's (one per row of a small batch). Each module keeps its own, made with the model.
ROUTER_ARRIVALS = 64
NORM_ARRIVALS = 8


def moe_experts_parts(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    experts: ExpertWeights,
    expert_map: torch.Tensor | None = None,
) -> torch.Tensor | PartialSums:
    """On CUDA a path with no host sync (graph-capturable). FP8 experts: the Triton kernels
    that read the FP8 weights and block scales as stored (never a dequantized copy), their
    output left as `PartialSums` for the next fused add + RMSNorm. bf16: for a few tokens the
    Triton GEMV kernels, else grouped GEMMs. Small fp32 test models: every expert on every
    token. On CPU the reference on dequantized weights. `expert_map` (global expert id ->
    local index, -1 where not owned) is for expert parallelism: FP8 only."""
    fp8 = _triton_fp8_moe() if x.is_cuda else None
    if fp8 is not None and (experts.is_fp8 or expert_map is not None):
        return fp8.moe_experts_parts(x, weights, expert_ids, experts, expert_map)
    if expert_map is not None:
        raise NotImplementedError("expert_map needs the Triton MoE kernels (CUDA)")
    w13, w2 = experts.dense(x.dtype) if experts.is_fp8 else (experts.w13, experts.w2)
    if x.is_cuda:
        small = _triton_moe()
        if small is not None and x.dtype == torch.bfloat16 and x.shape[0] <= small.MAX_TOKENS:
            return small.moe_experts_small_batch(x, weights, expert_ids, w13, w2)
        if grouped_moe.is_available() and x.dtype == torch.bfloat16:
            return grouped_moe.moe_experts_grouped(x, weights, expert_ids, w13, w2)
        return reference.moe_experts_dense(x, weights, expert_ids, w13, w2)
    return reference.moe_experts(x, weights, expert_ids, w13, w2)


def fp8_linear(
    x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]
) -> torch.Tensor:
    """x @ W^T for an FP8 block-quantized W: on CUDA the Triton kernel on the stored bytes; on
    CPU (or without Triton) through a dequantized temporary."""
    kernel = _triton_fp8_linear() if x.is_cuda else None
    if kernel is not None:
        return kernel.fp8_linear(x, weight, scale_inv, block)
    return F.linear(x, reference.dequantize_fp8_block(weight, scale_inv, block, x.dtype))


def fp8_linear_parts(
    x: torch.Tensor | PendingNorm,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
) -> torch.Tensor | PartialSums:
    """`fp8_linear` for a consumer that sums split-K pieces itself (the fused add + RMSNorm,
    the QK-norm kernel): on CUDA the pieces as `PartialSums`, no reduction launch. x may be
    a `PendingNorm` (the one-row GEMV finishes it as it loads)."""
    kernel = _triton_fp8_linear() if weight.is_cuda else None
    if kernel is not None:
        return kernel.fp8_linear_parts(x, weight, scale_inv, block)
    return fp8_linear(materialize(x), weight, scale_inv, block)


def fp8_linear_takes_pending_norm(num_rows: int, device: torch.device) -> bool:
    """Whether `fp8_linear_parts` finishes a `PendingNorm` of `num_rows` in its own launch."""
    kernel = _triton_fp8_linear() if device.type == "cuda" else None
    return kernel is not None and kernel.takes_pending_norm(num_rows)


def route(
    x: torch.Tensor,
    gate_weight: torch.Tensor,
    correction_bias: torch.Tensor,
    top_k: int,
    arrivals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M2's router (reference.route): on CUDA one Triton launch for a decode batch (logits,
    sigmoid, biased top-k, weights; `arrivals`: the router's own counters, see
    `fused_small_ops.new_router_arrivals`), cuBLAS logits and a top-k kernel for more tokens."""
    fused = _triton_fused() if x.is_cuda else None
    if fused is not None:
        return fused.route(x, gate_weight, correction_bias, top_k, arrivals)
    return reference.route(x, gate_weight, correction_bias, top_k)


def route_normed(
    norm: PendingNorm,
    gate_weight: torch.Tensor,
    correction_bias: torch.Tensor,
    top_k: int,
    arrivals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`route` of a `PendingNorm`: (weights, ids, the normed row). On CUDA the router
    kernel finishes the norm as it loads the row (`router_takes_pending_norm`)."""
    fused, (rows, hidden) = _triton_fused(), norm.shape
    if fused is not None and router_takes_pending_norm(rows, hidden, norm.x.device):
        return fused.route_normed(norm, gate_weight, correction_bias, top_k, arrivals)
    h = norm.materialize()
    return (*route(h, gate_weight, correction_bias, top_k, arrivals), h)


def router_takes_pending_norm(num_rows: int, hidden: int, device: torch.device) -> bool:
    """Whether `route_normed` finishes a `PendingNorm` of `num_rows` x `hidden` in the
    router's own launch (one row on CUDA, a width each router program holds whole)."""
    fused = _triton_fused() if device.type == "cuda" else None
    return fused is not None and num_rows == 1 and fused.routes_pending_norm(hidden)


def add_rms_norm(
    x: torch.Tensor,
    delta: torch.Tensor | PartialSums | None,
    weight: torch.Tensor,
    eps: float,
    arrivals: torch.Tensor | None = None,
    defer: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | PendingNorm]:
    """(x + delta, its RMSNorm): on CUDA one kernel that updates x in place (and sums `delta`
    when it is left as pieces); with `arrivals` (NORM_ARRIVALS counters) a small batch's rows
    are cut over several programs. `defer` (for consumers that take one): one such row's
    norm may come back as a `PendingNorm` for them to finish."""
    fused = _triton_fused() if x.is_cuda and x.is_contiguous() else None
    if fused is not None:
        return fused.add_rms_norm(x, delta, weight, eps, arrivals, defer)
    return reference.add_rms_norm(x, None if delta is None else materialize(delta), weight, eps)


def qk_norm_rope_store(
    q: torch.Tensor | PartialSums,
    k: torch.Tensor | PartialSums,
    v: torch.Tensor | PartialSums,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    eps: float,
    head_dim: int,
) -> torch.Tensor:
    """Full-width QK-norm, partial RoPE and the KV-cache write (reference.qk_norm_rope_store):
    on CUDA one kernel per step, which also sums q/k/v left as split-K pieces."""
    fused = _triton_fused() if k_cache.is_cuda and head_dim & (head_dim - 1) == 0 else None
    if fused is not None:
        return fused.qk_norm_rope_store(
            q, k, v, q_weight, k_weight, *rope, k_cache, v_cache, slot_mapping, eps, head_dim
        )
    q, k, v = materialize(q), materialize(k), materialize(v)
    return reference.qk_norm_rope_store(
        q, k, v, q_weight, k_weight, *rope, k_cache, v_cache, slot_mapping, eps, head_dim
    )


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
def _triton_fused() -> ModuleType | None:
    try:
        from m2agent.engine.kernels import fused_small_ops
    except ImportError:
        return None
    return fused_small_ops


@functools.cache
def _triton_fp8_moe() -> ModuleType | None:
    try:
        from m2agent.engine.kernels import fp8_moe
    except ImportError:
        return None
    return fp8_moe


@functools.cache
def _triton_fp8_linear() -> ModuleType | None:
    try:
        from m2agent.engine.kernels import fp8_linear
    except ImportError:
        return None
    return fp8_linear


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
