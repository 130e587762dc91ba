"""Decode attention over the paged KV cache, in Triton: one query token per sequence.

One program per (sequence, KV head) serves that head's whole group of query heads (GQA), so
each key and value is read once. Keys are visited a tile of pages at a time with an online
softmax. Reads sequence lengths and block tables from device tensors: no host sync, so it can
be captured in a CUDA graph. The readable reference is `reference.paged_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _paged_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    scale,
    stride_q_tok,
    stride_q_head,
    stride_k_block,
    stride_k_slot,
    stride_k_head,
    stride_table,
    stride_o_tok,
    stride_o_head,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    TILE: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" keeps fp32 inputs exact; bf16 ignores it
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + seq)
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, TILE)
    heads = kv_head * GROUP + g
    q_mask = g[:, None] < GROUP
    q = tl.load(
        q_ptr + seq * stride_q_tok + heads[:, None] * stride_q_head + d[None, :],
        mask=q_mask,
        other=0.0,
    )

    m_i = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    acc = tl.zeros((GROUP_PAD, HEAD_DIM), dtype=tl.float32)
    for start in range(0, seq_len, TILE):
        pos = start + n
        valid = pos < seq_len
        block = tl.load(block_tables_ptr + seq * stride_table + pos // PAGE, mask=valid, other=0)
        offsets = (
            block.to(tl.int64) * stride_k_block
            + (pos % PAGE) * stride_k_slot
            + kv_head * stride_k_head
        )
        k = tl.load(k_ptr + offsets[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + offsets[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + seq * stride_o_tok + heads[:, None] * stride_o_head + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=q_mask,
    )


def supports(head_dim: int) -> bool:
    """tl.dot needs a power-of-two inner size of at least 16."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [B, H, D] (one token per sequence); caches [N_blocks, page, Hkv, D];
    block_tables [B, max_blocks] int32; seq_lens [B] int32 (>= 1). Returns [B, H, D]."""
    num_seqs, num_heads, head_dim = q.shape
    page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    tile = max(64, page)
    _paged_decode_kernel[(num_seqs, num_kv_heads)](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        seq_lens,
        scale,
        q.stride(0),
        q.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        out.stride(0),
        out.stride(1),
        GROUP=group,
        GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim,
        PAGE=page,
        TILE=tile,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
    )
    return out
