"""Causal attention of any batch (prefill chunks, cached prefixes, decodes) over the paged KV
cache, in Triton, flash-attention style.

Sequence b has query_lens[b] new tokens, the last ones of its seq_lens[b]; query i of it sits
at position seq_len - q_len + i and sees keys 0 .. that position. One program per (tile of
BLOCK_M queries, head, sequence); keys stream through a tile at a time, page by page, with an
online softmax. The readable version is `reference.paged_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# The block table's width changes with the batch: one build serves every width.
@triton.jit(do_not_specialize=["stride_table"])
def _paged_prefill_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    query_start_ptr,
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
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    head = tl.program_id(1)
    seq = tl.program_id(2)
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    if tile * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len
    kv_head = head // GROUP

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < q_len
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(
        q_ptr + (q_start + rows)[:, None] * stride_q_tok + head * stride_q_head + d[None, :],
        mask=row_ok[:, None],
        other=0.0,
    )
    positions = context + rows  # absolute position of each query
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    n = tl.arange(0, BLOCK_N)
    key_end = tl.minimum(context + (tile + 1) * BLOCK_M, seq_len)  # last query's bound
    for start in range(0, key_end, BLOCK_N):
        keys = start + n
        key_ok = keys < key_end
        block = tl.load(block_tables_ptr + seq * stride_table + keys // PAGE, mask=key_ok, other=0)
        offsets = (
            block.to(tl.int64) * stride_k_block
            + (keys % PAGE) * stride_k_slot
            + kv_head * stride_k_head
        )
        k = tl.load(k_ptr + offsets[:, None] + d[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(v_ptr + offsets[:, None] + d[None, :], mask=key_ok[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        visible = (keys[None, :] <= positions[:, None]) & key_ok[None, :]
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + (q_start + rows)[:, None] * stride_o_tok + head * stride_o_head + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None],
    )


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start: torch.Tensor,
    max_query_len: int,
    scale: float,
) -> torch.Tensor:
    """q [T, H, D] (sequences one after another, query_start [B+1] int32 their offsets);
    caches [N_blocks, page, Hkv, D]; block_tables [B, max_blocks] int32; seq_lens [B] int32."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    block_m = 64 if q.dtype != torch.float32 else 32
    grid = (triton.cdiv(max_query_len, block_m), num_heads, seq_lens.shape[0])
    _paged_prefill_kernel[grid](
        q, k_cache, v_cache, out, block_tables, seq_lens, query_start, scale,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, PAGE=page, BLOCK_M=block_m,
        BLOCK_N=64 if q.dtype != torch.float32 else 32,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=4,
    )  # fmt: skip
    return out
