"""Decode attention over the paged KV cache, in Triton: one query token per sequence.

Split-KV (flash-decoding): each sequence's keys are cut into up to SPLITS contiguous chunks, one
program per (sequence, KV head, chunk), so even a batch of one keeps every SM streaming KV.
Each program serves its KV head's whole group of query heads (GQA: each key and value is read
once), runs an online softmax over its chunk, and writes its partial output with its
log-sum-exp; a second kernel combines the chunks. The chunk count depends only on the batch
size (fixed per captured graph); the chunk length follows each sequence's length on the device,
so short contexts use few chunks and the rest exit at once. Sequence lengths and block tables
are read from device tensors: no host sync, so CUDA graphs capture it. Under PDL each program
asks its chunk's first tile of keys and values into L2 before it waits for the kernel before
it. The readable reference is `reference.paged_attention`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels import pdl
from m2agent.engine.kernels.occupancy import sm_count
from m2agent.engine.kernels.pdl import wait_for_inputs

MAX_SPLITS = 32
PREFETCH_FIRST_TILE = True  # under PDL (`_paged_decode_kernel`); False for A/B timing


@triton.jit
def _prefetch_l2(addr, size):
    """Each element: bring `size` bytes at `addr` (16-byte aligned, a multiple of 16; 0:
    nothing) into L2, without waiting (`cp.async.bulk.prefetch.L2`, sm90+)."""
    tl.inline_asm_elementwise(
        """{
        .reg .pred p;
        setp.gt.s32 p, $2, 0;
        @p cp.async.bulk.prefetch.L2.global [$1], $2;
        mov.u32 $0, 0;
        }""",
        "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1,
    )  # fmt: skip


@triton.jit
def _kv_offsets(
    table_row, pos, ok, kv_head, stride_k_block, stride_k_slot, stride_k_head,
    PAGE: tl.constexpr,
):  # fmt: skip
    """Where positions `pos` (where `ok`) of the sequence whose block-table row starts at
    `table_row` keep their keys (and values) for `kv_head`: offsets into the caches."""
    block = tl.load(table_row + pos // PAGE, mask=ok, other=0)
    return (
        block.to(tl.int64) * stride_k_block
        + (pos % PAGE) * stride_k_slot
        + (kv_head * stride_k_head)
    )


# The block table's width changes with the batch: one build serves every width.
@triton.jit(do_not_specialize=["stride_table"])
def _paged_decode_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,  # [B, H, D] when SPLITS == 1, else partials [B, H, SPLITS, D] fp32
    lse_ptr,  # [B, H, SPLITS] fp32 (unused when SPLITS == 1)
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
    NUM_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    TILE: tl.constexpr,
    SPLITS: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" keeps fp32 inputs exact; bf16 ignores it
    PREFETCH: tl.constexpr,  # only with USE_PDL
    USE_PDL: tl.constexpr,
):
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)  # from the host: read before the wait
    # This program's chunk of the keys: whole tiles, the same length for every chunk.
    chunk = tl.cdiv(tl.cdiv(seq_len, SPLITS), TILE) * TILE
    lo = split * chunk
    num_tiles = tl.cdiv(tl.minimum(seq_len - lo, chunk), TILE)  # <= 0: no keys here
    g = tl.arange(0, GROUP_PAD)
    d = tl.arange(0, HEAD_DIM)
    n = tl.arange(0, TILE)
    if PREFETCH:
        # While the kernel before finishes: ask the first tile's keys and values into L2.
        # Lengths and block tables come from the host; the caches' bytes are only read later
        # (after the wait), and L2 is where every write lands, so nothing can be stale.
        pos = lo + n
        rows = (pos < seq_len) & (pos < lo + chunk)
        offsets = _kv_offsets(
            block_tables_ptr + seq * stride_table, pos, rows, kv_head, stride_k_block,
            stride_k_slot, stride_k_head, PAGE,
        )  # fmt: skip
        row_bytes = tl.where(rows, HEAD_DIM * (k_ptr.dtype.element_ty.primitive_bitwidth // 8), 0)
        _prefetch_l2(k_ptr + offsets, row_bytes)
        _prefetch_l2(v_ptr + offsets, row_bytes)
    wait_for_inputs(USE_PDL)  # q, and each sequence's newest key and value
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
    for i in range(0, num_tiles):
        pos = lo + i * TILE + n
        valid = pos < seq_len
        offsets = _kv_offsets(
            block_tables_ptr + seq * stride_table, pos, valid, kv_head, stride_k_block,
            stride_k_slot, stride_k_head, PAGE,
        )  # fmt: skip
        k = tl.load(k_ptr + offsets[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        v = tl.load(v_ptr + offsets[:, None] + d[None, :], mask=valid[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        s = tl.where(valid[None, :], s * scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    if SPLITS == 1:
        tl.store(
            out_ptr + seq * stride_o_tok + heads[:, None] * stride_o_head + d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=q_mask,
        )
    else:
        row = (seq * NUM_HEADS + heads) * SPLITS + split
        tl.store(out_ptr + row[:, None] * HEAD_DIM + d[None, :], out, mask=q_mask)
        lse = tl.where(has_keys, m_i + tl.log(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + row, lse, mask=g < GROUP)


@triton.jit
def _combine_kernel(
    part_ptr,  # [B, H, SPLITS, D] fp32
    lse_ptr,  # [B, H, SPLITS] fp32
    out_ptr,  # [B, H, D]
    stride_o_tok,
    stride_o_head,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    SPLITS: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_inputs(USE_PDL)
    seq = tl.program_id(0)
    head = tl.program_id(1)
    s = tl.arange(0, SPLITS_PAD)
    d = tl.arange(0, HEAD_DIM)
    row = (seq * NUM_HEADS + head) * SPLITS + s
    lse = tl.load(lse_ptr + row, mask=s < SPLITS, other=float("-inf"))
    weight = tl.exp(lse - tl.max(lse, 0))  # the first chunk always has keys: max is finite
    part = tl.load(part_ptr + row[:, None] * HEAD_DIM + d[None, :], mask=(s < SPLITS)[:, None])
    out = tl.sum(part * weight[:, None], 0) / tl.sum(weight, 0)
    tl.store(
        out_ptr + seq * stride_o_tok + head * stride_o_head + d,
        out.to(out_ptr.dtype.element_ty),
    )


def _rows_aligned(*caches: torch.Tensor) -> bool:
    """Whether every [D] row of the caches starts on 16 bytes (what the L2 prefetch needs)."""
    return all(
        c.data_ptr() % 16 == 0
        and all((stride * c.element_size()) % 16 == 0 for stride in c.stride()[:-1])
        and (c.shape[-1] * c.element_size()) % 16 == 0
        for c in caches
    )


def supports(head_dim: int) -> bool:
    """tl.dot needs a power-of-two inner size of at least 16."""
    return head_dim >= 16 and head_dim & (head_dim - 1) == 0


def choose_splits(num_seqs: int, num_kv_heads: int, device: torch.device) -> int:
    """Chunks per sequence: enough (sequence, head, chunk) programs for two per SM."""
    sms = sm_count(device)
    return max(1, min(MAX_SPLITS, -(-2 * sms // max(1, num_seqs * num_kv_heads))))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    splits: int | None = None,
) -> torch.Tensor:
    """q [B, H, D] (one token per sequence); caches [N_blocks, page, Hkv, D];
    block_tables [B, max_blocks] int32; seq_lens [B] int32 (>= 1). Returns [B, H, D].
    `splits`: chunks per sequence (default: from the batch size and the SM count)."""
    num_seqs, num_heads, head_dim = q.shape
    page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if num_seqs == 0:
        return out
    splits = splits or choose_splits(num_seqs, num_kv_heads, q.device)
    tile = max(64, page)
    if splits == 1:
        part, lse = out, out
    else:
        part = torch.empty(
            (num_seqs, num_heads, splits, head_dim), dtype=torch.float32, device=q.device
        )
        lse = torch.empty((num_seqs, num_heads, splits), dtype=torch.float32, device=q.device)
    _paged_decode_kernel[(num_seqs, num_kv_heads, splits)](
        q, k_cache, v_cache, part, lse, block_tables, seq_lens, scale,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        NUM_HEADS=num_heads, GROUP=group, GROUP_PAD=max(16, triton.next_power_of_2(group)),
        HEAD_DIM=head_dim, PAGE=page, TILE=tile, SPLITS=splits,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        PREFETCH=PREFETCH_FIRST_TILE and pdl.enabled(q.device) and _rows_aligned(k_cache, v_cache),
        num_warps=4, **pdl.launch_args(q.device),
    )  # fmt: skip
    if splits > 1:
        _combine_kernel[(num_seqs, num_heads)](
            part, lse, out, out.stride(0), out.stride(1),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, SPLITS=splits,
            SPLITS_PAD=triton.next_power_of_2(splits), num_warps=4, **pdl.launch_args(q.device),
        )  # fmt: skip
    return out
