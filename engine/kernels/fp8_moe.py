"""MoE experts in Triton straight from the checkpoint's weights: FP8 (e4m3) with 128x128 block
scales, or plain bf16/fp32. Only the experts the batch routes to are read; nothing is
dequantized into memory (each weight tile is converted in registers, then scaled per block).

Two paths, one pair of kernels (gate/up with SiLU(gate)*up fused, then down with the routing
weight applied):

- per pair (a few tokens, decode): each (token, slot) pair is its own block of one row, so no
  sorting at all; the grid spans pairs x output tiles, enough programs to put every SM on the
  weights at batch 1.
- grouped (larger batches): the pairs are sorted by expert on the GPU, each expert's rows
  padded to a multiple of BLOCK_M, so each program multiplies BLOCK_M rows by one tile of one
  expert's weights and every expert's weights are read once per row block.

Both have no host sync (the grouped grid is sized by the worst case and unused blocks exit at
once), so decode graphs capture them. The K outputs of each token are written per pair and
summed in a fixed order: graph replay and eager give the same bits.

Expert parallelism can pass `expert_map` (global expert id -> local index, -1 where this rank
does not own the expert): such pairs contribute zero. The readable version is
`reference.moe_experts` on the dequantized weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels.occupancy import split_k
from m2agent.engine.kernels.reference import ExpertWeights


@dataclass(frozen=True, slots=True)
class TileConfig:
    grouped: bool
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Measured on an H200 by `m2agent bench kernels` (M2 shapes; docs/bench/h200-kernels.json):
# per pair up to 4 tokens, then grouped; per number of tokens (upper bound).
H200_TILES: tuple[tuple[int, TileConfig], ...] = (
    (4, TileConfig(False, 16, 64, 128, 4, 3)),
    (64, TileConfig(True, 16, 64, 128, 4, 3)),
    (256, TileConfig(True, 32, 128, 128, 8, 3)),
    (1 << 62, TileConfig(True, 64, 128, 128, 8, 3)),
)


def pick_tiles(num_tokens: int, block_k_max: int) -> TileConfig:
    config = next(c for limit, c in H200_TILES if num_tokens <= limit)
    block_k = min(config.block_k, block_k_max)
    return TileConfig(
        config.grouped, config.block_m, config.block_n, block_k, config.num_warps, config.num_stages
    )


@triton.jit
def _gate_up_kernel(
    x_ptr,  # [T, C]
    w_ptr,  # [E, 2I, C]: rows 0..I-1 gate (w1), I..2I-1 up (w3)
    s_ptr,  # [E, ceil(2I/BR), ceil(C/BC)] fp32 scale_inv (unused without HAS_SCALE)
    act_ptr,  # out: [rows, I] in x's dtype; with SPLIT > 1, fp32 [SPLIT, rows, 2I] partial sums
    rows_ptr,  # grouped: pair of each row, sorted by expert (>= num_pairs: padding)
    expert_ptr,  # grouped: expert of each row block; per pair: expert of each pair
    num_pairs,
    act_rows,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    TOP_K: tl.constexpr,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    PER_PAIR: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    expert = tl.load(expert_ptr + block)
    if expert < 0:
        return
    m = tl.arange(0, BLOCK_M)
    if PER_PAIR:
        pair = block + m * 0
        valid = m == 0
        out_row = pair
    else:
        pair = tl.load(rows_ptr + block * BLOCK_M + m)
        valid = pair < num_pairs
        out_row = block * BLOCK_M + m
    token = pair // TOP_K
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < INTER
    k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    gate = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for step in range(0, K_PER_SPLIT, BLOCK_K):
        k0 = split * K_PER_SPLIT + step
        kk = k0 + k
        k_ok = kk < HIDDEN
        a = tl.load(
            x_ptr + token[None, :] * HIDDEN + kk[:, None],
            mask=valid[None, :] & k_ok[:, None],
            other=0.0,
        )  # [BLOCK_K, BLOCK_M]: the rows' activations, transposed
        w_mask = n_ok[:, None] & k_ok[None, :]
        w1 = tl.load(w_base + n[:, None] * stride_wn + kk[None, :], mask=w_mask, other=0.0)
        w3 = tl.load(
            w_base + (n[:, None] + INTER) * stride_wn + kk[None, :], mask=w_mask, other=0.0
        )
        g = tl.dot(w1.to(a.dtype), a, input_precision=PRECISION)
        u = tl.dot(w3.to(a.dtype), a, input_precision=PRECISION)
        if HAS_SCALE:
            kb = k0 // BC
            s1 = tl.load(s_base + (n // BR) * stride_sn + kb, mask=n_ok, other=0.0)
            s3 = tl.load(s_base + ((n + INTER) // BR) * stride_sn + kb, mask=n_ok, other=0.0)
            gate += g * s1[:, None]
            up += u * s3[:, None]
        else:
            gate += g
            up += u
    mask = n_ok[:, None] & valid[None, :]
    if SPLIT == 1:
        act = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(
            act_ptr + out_row[None, :] * INTER + n[:, None],
            act.to(act_ptr.dtype.element_ty),
            mask=mask,
        )
    else:
        part = act_ptr + (split * act_rows + out_row[None, :]).to(tl.int64) * (2 * INTER)
        tl.store(part + n[:, None], gate, mask=mask)
        tl.store(part + INTER + n[:, None], up, mask=mask)


@triton.jit
def _silu_mul_kernel(
    part_ptr,  # [SPLIT, rows, 2I] fp32: gate and up partial sums
    act_ptr,  # out: [rows, I]
    rows_total,
    INTER: tl.constexpr,
    SPLIT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = i < INTER
    gate = tl.zeros((BLOCK,), dtype=tl.float32)
    up = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        base = part_ptr + (s * rows_total + row).to(tl.int64) * (2 * INTER)
        gate += tl.load(base + i, mask=ok, other=0.0)
        up += tl.load(base + INTER + i, mask=ok, other=0.0)
    act = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(act_ptr + row.to(tl.int64) * INTER + i, act.to(act_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _down_kernel(
    act_ptr,  # [rows, I]
    w_ptr,  # [E, C, I]
    s_ptr,  # [E, ceil(C/BR), ceil(I/BC)] fp32
    out_ptr,  # out: [SPLIT, num_pairs, C] fp32: each pair's expert output x its routing weight
    rows_ptr,
    expert_ptr,
    weights_ptr,  # [num_pairs] fp32 routing weights
    num_pairs,
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    PER_PAIR: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    expert = tl.load(expert_ptr + block)
    if expert < 0:
        return
    m = tl.arange(0, BLOCK_M)
    if PER_PAIR:
        pair = block + m * 0
        valid = m == 0
        act_row = pair
    else:
        pair = tl.load(rows_ptr + block * BLOCK_M + m)
        valid = pair < num_pairs
        act_row = block * BLOCK_M + m
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < HIDDEN
    k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for step in range(0, K_PER_SPLIT, BLOCK_K):
        k0 = split * K_PER_SPLIT + step
        kk = k0 + k
        k_ok = kk < INTER
        a = tl.load(
            act_ptr + act_row[None, :] * INTER + kk[:, None],
            mask=valid[None, :] & k_ok[:, None],
            other=0.0,
        )
        w = tl.load(
            w_base + n[:, None] * stride_wn + kk[None, :],
            mask=n_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        p = tl.dot(w.to(a.dtype), a, input_precision=PRECISION)
        if HAS_SCALE:
            s = tl.load(s_base + (n // BR) * stride_sn + k0 // BC, mask=n_ok, other=0.0)
            acc += p * s[:, None]
        else:
            acc += p
    routing = tl.load(weights_ptr + pair, mask=valid, other=0.0)
    acc = acc * routing[None, :]
    out = out_ptr + (split * num_pairs + pair[None, :]).to(tl.int64) * HIDDEN
    tl.store(
        out + n[:, None],
        acc,
        mask=n_ok[:, None] & valid[None, :],
    )


def align_by_expert(
    expert_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs sorted by expert, each expert's run padded to a multiple of `block_m`, on the
    device with no host sync. `expert_ids` [P] holds local expert indices (-1: skip the pair).
    Returns (rows [max_blocks * block_m]: pair index, >= P for padding;
    block_expert [max_blocks]: expert of each block, -1 for blocks past the end)."""
    pairs = expert_ids.numel()
    device = expert_ids.device
    max_blocks = -(-pairs // block_m) + min(num_experts, pairs)
    key = torch.where(expert_ids >= 0, expert_ids, num_experts).long()  # skipped: sort last
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=device)
    counts.scatter_add_(0, key, torch.ones_like(key))
    padded = (counts + block_m - 1) // block_m * block_m
    padded[num_experts:].zero_()  # (tensor ops only: a graph capture cannot take host values)
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    padded_start[num_experts:].fill_(max_blocks * block_m)  # skipped pairs: past the used rows
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    sorted_start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(pairs, device=device) - sorted_start[sorted_key]
    rows = torch.full((max_blocks * block_m + pairs,), pairs, dtype=torch.int32, device=device)
    rows.scatter_(0, padded_start[sorted_key] + rank, order.to(torch.int32))
    block_start = torch.arange(max_blocks, device=device) * block_m
    block_expert = torch.searchsorted(padded_end[:num_experts], block_start, right=True)
    block_expert = torch.where(block_expert < num_experts, block_expert, -1).to(torch.int32)
    return rows, block_expert


def moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    experts: ExpertWeights,
    expert_map: torch.Tensor | None = None,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """sum_k weights[t,k] * w2(silu(w1 x) * w3 x) over each token's K experts.
    x [T, C] (bf16 or fp32); weights [T, K] fp32, expert_ids [T, K] (global ids; with
    `expert_map`, ids are mapped to local ones and unowned experts skipped) -> [T, C]."""
    num_tokens, top_k = expert_ids.shape
    w13, w2 = experts.w13, experts.w2
    num_experts, hidden, inter = w13.shape[0], w13.shape[2], w2.shape[2]
    if num_tokens == 0:
        return torch.zeros((0, hidden), dtype=x.dtype, device=x.device)
    ids = expert_ids.reshape(-1)
    if expert_map is not None:
        ids = expert_map[ids]
    ids = ids.to(torch.int32).contiguous()
    pairs = ids.numel()
    block_rows, block_cols = experts.block
    tiles = tiles or pick_tiles(num_tokens, block_cols if experts.is_fp8 else 128)
    if experts.is_fp8 and block_cols % tiles.block_k:
        raise ValueError(f"block_k {tiles.block_k} must divide the FP8 block ({block_cols})")
    x = x.contiguous()
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    s13 = experts.w13_scale if experts.w13_scale is not None else w13
    s2 = experts.w2_scale if experts.w2_scale is not None else w2
    if tiles.grouped:
        rows, block_expert = align_by_expert(ids, num_experts, tiles.block_m)
        num_blocks, act_rows = block_expert.numel(), block_expert.numel() * tiles.block_m
    else:
        rows, block_expert, num_blocks, act_rows = ids, ids, pairs, pairs
    act = torch.empty((act_rows, inter), dtype=x.dtype, device=x.device)
    common = dict(
        BR=block_rows, BC=block_cols, BLOCK_M=tiles.block_m, BLOCK_K=tiles.block_k,
        PER_PAIR=not tiles.grouped, HAS_SCALE=experts.is_fp8, PRECISION=precision,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    # Split the reduction when the tiles alone are too few programs (decode: 8 pairs).
    n_tiles = triton.cdiv(inter, tiles.block_n)
    k_blocks = triton.cdiv(hidden, tiles.block_k)
    split = split_k(num_blocks * n_tiles, k_blocks, x.device)
    k_per_split = triton.cdiv(k_blocks, split) * tiles.block_k
    split = triton.cdiv(hidden, k_per_split)
    gate_up_out = (
        act
        if split == 1
        else torch.empty((split, act_rows, 2 * inter), dtype=torch.float32, device=x.device)
    )
    _gate_up_kernel[(num_blocks, n_tiles, split)](
        x, w13, s13, gate_up_out, rows, block_expert, pairs, act_rows,
        w13.stride(0), w13.stride(1), s13.stride(0), s13.stride(1),
        TOP_K=top_k, HIDDEN=hidden, INTER=inter, BLOCK_N=tiles.block_n,
        SPLIT=split, K_PER_SPLIT=k_per_split, **common,
    )  # fmt: skip
    if split > 1:
        _silu_mul_kernel[(act_rows, triton.cdiv(inter, 256))](
            gate_up_out, act, act_rows, INTER=inter, SPLIT=split, BLOCK=256, num_warps=4
        )
    n_tiles = triton.cdiv(hidden, tiles.block_n)
    k_blocks = triton.cdiv(inter, tiles.block_k)
    split = split_k(num_blocks * n_tiles, k_blocks, x.device)
    k_per_split = triton.cdiv(k_blocks, split) * tiles.block_k
    split = triton.cdiv(inter, k_per_split)
    skipped = expert_map is not None
    partial = (torch.zeros if skipped else torch.empty)(
        (split, pairs, hidden), dtype=torch.float32, device=x.device
    )
    _down_kernel[(num_blocks, n_tiles, split)](
        act, w2, s2, partial, rows, block_expert, weights.reshape(-1).float().contiguous(), pairs,
        w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1),
        HIDDEN=hidden, INTER=inter, BLOCK_N=tiles.block_n,
        SPLIT=split, K_PER_SPLIT=k_per_split, **common,
    )  # fmt: skip
    return partial.view(split, num_tokens, top_k, hidden).sum(dim=(0, 2)).to(x.dtype)
