"""MoE experts in Triton straight from the checkpoint's weights: FP8 (e4m3) with 128x128 block
scales, or plain bf16/fp32. Only the experts the batch routes to are read; nothing is
dequantized into memory (each weight tile is converted in registers, then scaled per block).

Three paths, each a gate/up kernel (SiLU(gate)*up fused) and a down kernel (routing weight
applied):

- per-pair GEMV (decode, one token): each (token, slot) pair's activation row times weight
  tiles with plain FMAs; the block scales fold into the activations (a tile's rows share one
  scale row-block), so there is no MMA padded to 16 rows and no shared-memory round trip.
- per pair on the MMA (a few tokens): each pair is its own block of one row of a BLOCK_M-row
  MMA, so no sorting at all; the grid spans pairs x output tiles.
- grouped (larger batches): the pairs are sorted by expert on the GPU, each expert's rows
  padded to a multiple of BLOCK_M, so each program multiplies BLOCK_M rows by one tile of one
  expert's weights and every expert's weights are read once per row block.

When there are too few output tiles to keep every SM streaming, the reduction is split over
programs (split-K). No launch exists only to add the pieces up: the GEMV down kernel forms
SiLU(gate)*up from the gate/up pieces as it loads them, and every down kernel's pieces (one
per split and expert pick) are returned as `PartialSums` for the next fused residual add +
RMSNorm to sum; always in a fixed order, so graph replay and eager give the same bits. No host
sync anywhere (the grouped grid is sized by the worst case and unused blocks exit at once), so
decode graphs capture them. Tiles per token-count bucket: `H200_TILES`.

Expert parallelism can pass `expert_map` (global expert id -> local index, -1 where this rank
does not own the expert): such pairs contribute zero. The readable version is
`reference.moe_experts` on the dequantized weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels import pdl
from m2agent.engine.kernels.cache_policy import streamed_eviction
from m2agent.engine.kernels.occupancy import split_k
from m2agent.engine.kernels.partial_sums import PartialSums
from m2agent.engine.kernels.pdl import wait_for_inputs
from m2agent.engine.kernels.reference import ExpertWeights


@dataclass(frozen=True, slots=True)
class KernelTiles:
    """One kernel's tile: output features per program, reduction step, warps, pipeline depth,
    and the split-K target (cut the reduction until this many programs per SM; the MMA gate/up
    kernel never splits: its output feeds the down kernel's MMA as stored activations)."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    programs_per_sm: int = 4


@dataclass(frozen=True, slots=True)
class TileConfig:
    """grouped: sorted by expert, BLOCK_M rows per program on the tensor cores. Otherwise per
    pair: with `gemv`, each program multiplies one pair's activation row by a weight tile with
    plain FMAs (no MMA padding to 16 rows, no shared-memory round trip: the decode path);
    else one row of a BLOCK_M-row MMA."""

    grouped: bool
    block_m: int  # rows per program (per pair: one row used of BLOCK_M, the MMA's minimum)
    gate_up: KernelTiles
    down: KernelTiles
    gemv: bool = False

    @classmethod
    def uniform(
        cls, grouped: bool, block_m: int, block_n: int, block_k: int, warps: int, stages: int
    ) -> TileConfig:
        tiles = KernelTiles(block_n, block_k, warps, stages)
        return cls(grouped, block_m, tiles, tiles)


# Measured on an H200 (M2 shapes) with realistic routing (router weights of std 0.02: 1,024
# tokens touch all 256 experts), `m2agent bench kernels` (docs/bench/i12/round4): per number
# of tokens (upper bound): per-pair GEMV up to 16 (93% of the touched-bytes bound at 16 tokens,
# where the grouped MMA reaches 62%), grouped with 16-row blocks up to 256 (67% at 64 and 256
# tokens; 32- and 64-row blocks 45-49% and 42%), then 64-row blocks (39% at 1,024 tokens, the
# best of the candidates there). The round-2 table (docs/bench/i12/tune-h200*.json) was tuned
# on a degenerate router that sent every token to the same few experts. For one token the
# GEMV down kernel takes 128-column steps (with 256: 255 registers and 264-304 B spilled; now
# none): in the whole batch-1 step (scripts/ab_decode.py, docs/bench/i12/round5) 0.5-1.4 us
# less per layer; alone 31.9 vs 32.5 us. At 16 tokens 256-column steps stay ahead (360 vs 368).
_GEMV_GATE_UP = KernelTiles(32, 256, 4, 2)
H200_TILES: tuple[tuple[int, TileConfig], ...] = (
    (1, TileConfig(False, 16, _GEMV_GATE_UP, KernelTiles(64, 128, 4, 2), gemv=True)),
    (16, TileConfig(False, 16, _GEMV_GATE_UP, KernelTiles(64, 256, 4, 2), gemv=True)),
    (256, TileConfig.uniform(True, 16, 64, 128, 4, 3)),
    (1 << 62, TileConfig.uniform(True, 64, 64, 128, 4, 3)),
)
# The GEMV down kernel re-reads every gate/up piece for each of its output tiles: past a few
# pieces that costs more than the split gives.
MAX_GATE_UP_SPLIT = 4


def _fit(tiles: KernelTiles, block_k_max: int) -> KernelTiles:
    block_k = min(tiles.block_k, block_k_max)
    return KernelTiles(
        tiles.block_n, block_k, tiles.num_warps, tiles.num_stages, tiles.programs_per_sm
    )


def pick_tiles(num_tokens: int, block_k_max: int) -> TileConfig:
    c = next(c for limit, c in H200_TILES if num_tokens <= limit)
    if c.gemv:  # GEMV steps may span several scale blocks: no cap on block_k
        return c
    gate_up, down = _fit(c.gate_up, block_k_max), _fit(c.down, block_k_max)
    return TileConfig(c.grouped, c.block_m, gate_up, down)


@triton.jit
def _block_rows(block, rows_ptr, num_pairs, BLOCK_M: tl.constexpr, PER_PAIR: tl.constexpr):
    """This program's rows: (pair index of each, which are real, row in the per-row buffers)."""
    m = tl.arange(0, BLOCK_M)
    if PER_PAIR:
        pair = block + m * 0
        valid = m == 0
        row = pair
    else:
        pair = tl.load(rows_ptr + block * BLOCK_M + m)
        valid = pair < num_pairs
        row = block * BLOCK_M + m
    return pair, valid, row


@triton.jit
def _scaled_dot(
    w_base,
    s_base,
    n,
    n_ok,
    kk,
    k_ok,
    k0,
    a,
    stride_wn,
    stride_sn,
    BR: tl.constexpr,
    BC: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Weight rows `n` x columns `kk` (one scale block wide) times `a` [BLOCK_K, BLOCK_M],
    scaled by the rows' block scales: [BLOCK_N, BLOCK_M] fp32."""
    w_mask = n_ok[:, None] & k_ok[None, :]
    w = tl.load(w_base + n[:, None] * stride_wn + kk[None, :], mask=w_mask, other=0.0)
    p = tl.dot(w.to(a.dtype), a, input_precision=PRECISION)
    if HAS_SCALE:
        s = tl.load(s_base + (n // BR) * stride_sn + k0 // BC, mask=n_ok, other=0.0)
        p = p * s[:, None]
    return p


@triton.jit
def _gate_up_kernel(
    x_ptr,  # [T, C]
    w_ptr,  # [E, 2I, C]: rows 0..I-1 gate (w1), I..2I-1 up (w3)
    s_ptr,  # [E, ceil(2I/BR), ceil(C/BC)] fp32 scale_inv (unused without HAS_SCALE)
    act_ptr,  # out: [rows, I] in x's dtype: SiLU(gate) * up
    rows_ptr,  # grouped: pair of each row, sorted by expert (>= num_pairs: padding)
    expert_ptr,  # grouped: expert of each row block; per pair: expert of each pair
    num_pairs,
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
    PER_PAIR: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_inputs(USE_PDL)
    block = tl.program_id(0)
    tile = tl.program_id(1)
    expert = tl.load(expert_ptr + block)
    if expert < 0:
        return
    pair, valid, out_row = _block_rows(block, rows_ptr, num_pairs, BLOCK_M, PER_PAIR)
    token = pair // TOP_K
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < INTER
    k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    gate = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    up = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        kk = k0 + k
        k_ok = kk < HIDDEN
        a = tl.load(
            x_ptr + token[None, :] * HIDDEN + kk[:, None],
            mask=valid[None, :] & k_ok[:, None],
            other=0.0,
        )  # [BLOCK_K, BLOCK_M]: the rows' activations, transposed
        gate += _scaled_dot(
            w_base, s_base, n, n_ok, kk, k_ok, k0, a, stride_wn, stride_sn,
            BR, BC, HAS_SCALE, PRECISION,
        )  # fmt: skip
        up += _scaled_dot(
            w_base, s_base, n + INTER, n_ok, kk, k_ok, k0, a, stride_wn, stride_sn,
            BR, BC, HAS_SCALE, PRECISION,
        )  # fmt: skip
    act = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(
        act_ptr + out_row[None, :] * INTER + n[:, None],
        act.to(act_ptr.dtype.element_ty),
        mask=n_ok[:, None] & valid[None, :],
    )


@triton.jit
def _down_kernel(
    act_ptr,  # [rows, I] in x's dtype
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
    USE_PDL: tl.constexpr,
):
    wait_for_inputs(USE_PDL)
    block = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    expert = tl.load(expert_ptr + block)
    if expert < 0:
        return
    pair, valid, act_row = _block_rows(block, rows_ptr, num_pairs, BLOCK_M, PER_PAIR)
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
        acc += _scaled_dot(
            w_base, s_base, n, n_ok, kk, k_ok, k0, a, stride_wn, stride_sn,
            BR, BC, HAS_SCALE, PRECISION,
        )  # fmt: skip
    routing = tl.load(weights_ptr + pair, mask=valid, other=0.0)
    acc = acc * routing[None, :]
    out = out_ptr + (split * num_pairs + pair[None, :]).to(tl.int64) * HIDDEN
    tl.store(out + n[:, None], acc, mask=n_ok[:, None] & valid[None, :])


@triton.jit
def _gemv_step(
    w_base,
    s_base,
    n,
    n_ok,
    scale_row,
    kk,
    k_ok,
    a,
    stride_wn,
    stride_sn,
    BC: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    EVICT: tl.constexpr,
):
    """Weight rows `n` x columns `kk` times the vector `a` [BLOCK_K] (fp32): [BLOCK_N] fp32.
    All rows share one scale row-block (`scale_row`), so the scales fold into `a`."""
    w, s = _gemv_load(
        w_base, s_base, n, n_ok, scale_row, kk, k_ok, stride_wn, stride_sn, BC, HAS_SCALE, EVICT
    )
    return _gemv_dot(w, s, a)


@triton.jit
def _gemv_load(
    w_base,
    s_base,
    n,
    n_ok,
    scale_row,
    kk,
    k_ok,
    stride_wn,
    stride_sn,
    BC: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    EVICT: tl.constexpr,  # the weights' L2 policy (`cache_policy`: "evict_first" on CUDA)
):
    """The weight tile of `_gemv_step` and the scale of each of its columns (ones without)."""
    w_mask = n_ok[:, None] & k_ok[None, :]
    w = tl.load(
        w_base + n[:, None] * stride_wn + kk[None, :], mask=w_mask, other=0.0,
        eviction_policy=EVICT,
    )  # fmt: skip
    if HAS_SCALE:
        s = tl.load(s_base + scale_row * stride_sn + kk // BC, mask=k_ok, other=0.0)
    else:
        s = tl.full(kk.shape, 1.0, tl.float32)
    return w, s


@triton.jit
def _gemv_dot(w, s, a):
    return tl.sum(w.to(tl.float32) * (a * s)[None, :], 1)


@triton.jit
def _gate_up_gemv_kernel(
    x_ptr,  # [T, C]
    w_ptr,  # [E, 2I, C]
    s_ptr,  # [E, ceil(2I/BR), ceil(C/BC)]
    act_ptr,  # out: [pairs, I] in x's dtype; with SPLIT > 1, fp32 [SPLIT, pairs, 2I] pieces
    expert_ptr,  # [pairs] expert of each pair (-1: skip)
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    TOP_K: tl.constexpr,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    EVICT: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_inputs(USE_PDL)  # the expert ids come from the launch just before
    pair = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    num_pairs = tl.num_programs(0)
    expert = tl.load(expert_ptr + pair)
    if expert < 0:
        return
    token = pair // TOP_K
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < INTER
    k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    gate_row = (tile * BLOCK_N) // BR
    up_row = (tile * BLOCK_N + INTER) // BR
    gate = tl.zeros((BLOCK_N,), dtype=tl.float32)
    up = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for step in range(0, K_PER_SPLIT, BLOCK_K):
        kk = split * K_PER_SPLIT + step + k
        k_ok = kk < HIDDEN
        a = tl.load(x_ptr + token * HIDDEN + kk, mask=k_ok, other=0.0).to(tl.float32)
        gate += _gemv_step(
            w_base, s_base, n, n_ok, gate_row, kk, k_ok, a, stride_wn, stride_sn, BC,
            HAS_SCALE, EVICT,
        )  # fmt: skip
        up += _gemv_step(
            w_base, s_base, n + INTER, n_ok, up_row, kk, k_ok, a, stride_wn, stride_sn, BC,
            HAS_SCALE, EVICT,
        )  # fmt: skip
    if SPLIT == 1:
        act = gate / (1.0 + tl.exp(-gate)) * up
        tl.store(act_ptr + pair * INTER + n, act.to(act_ptr.dtype.element_ty), mask=n_ok)
    else:
        part = act_ptr + (split * num_pairs + pair).to(tl.int64) * (2 * INTER)
        tl.store(part + n, gate, mask=n_ok)
        tl.store(part + INTER + n, up, mask=n_ok)


@triton.jit
def _down_gemv_kernel(
    act_ptr,  # [pairs, I] in x's dtype, or fp32 [GU_SPLIT, pairs, 2I] gate/up pieces
    x_ptr,  # the MoE input (only its dtype is used)
    w_ptr,  # [E, C, I]
    s_ptr,  # [E, ceil(C/BR), ceil(I/BC)]
    out_ptr,  # out: [SPLIT, pairs, C] fp32
    expert_ptr,
    weights_ptr,  # [pairs] fp32 routing weights
    stride_we,
    stride_wn,
    stride_se,
    stride_sn,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPLIT: tl.constexpr,
    K_PER_SPLIT: tl.constexpr,
    GU_SPLIT: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    EVICT: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """With PDL, the expert ids, routing weights and the first weight tile load before the
    wait: they come from the router, two launches back (the gate/up kernel runs between), so
    they are complete and visible when this kernel starts (see `pdl`)."""
    pair = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    num_pairs = tl.num_programs(0)
    expert = tl.load(expert_ptr + pair, cache_modifier=".cg")
    routing = tl.load(weights_ptr + pair, cache_modifier=".cg")
    live = expert >= 0
    n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < HIDDEN
    k = tl.arange(0, BLOCK_K)
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    scale_row = (tile * BLOCK_N) // BR
    kk = split * K_PER_SPLIT + k
    k_ok = kk < INTER
    w, s = _gemv_load(
        w_base, s_base, n, n_ok & live, scale_row, kk, k_ok & live, stride_wn, stride_sn, BC,
        HAS_SCALE, EVICT,
    )  # fmt: skip
    wait_for_inputs(USE_PDL)  # the gate/up activations come from the launch just before
    if expert < 0:
        return
    a = _down_activation(act_ptr, x_ptr, pair, num_pairs, kk, k_ok, INTER, GU_SPLIT)
    acc = _gemv_dot(w, s, a)
    for step in range(BLOCK_K, K_PER_SPLIT, BLOCK_K):
        kk = split * K_PER_SPLIT + step + k
        k_ok = kk < INTER
        a = _down_activation(act_ptr, x_ptr, pair, num_pairs, kk, k_ok, INTER, GU_SPLIT)
        acc += _gemv_step(
            w_base, s_base, n, n_ok, scale_row, kk, k_ok, a, stride_wn, stride_sn, BC,
            HAS_SCALE, EVICT,
        )  # fmt: skip
    acc = acc * routing
    tl.store(out_ptr + (split * num_pairs + pair).to(tl.int64) * HIDDEN + n, acc, mask=n_ok)


@triton.jit
def _down_activation(
    act_ptr, x_ptr, pair, num_pairs, kk, k_ok, INTER: tl.constexpr, GU_SPLIT: tl.constexpr
):
    """The pair's SiLU(gate) * up at columns `kk` (fp32): stored, or formed from the gate/up
    kernel's split-K pieces (rounded to x's dtype, as stored activations are)."""
    if GU_SPLIT == 1:
        a = tl.load(act_ptr + pair * INTER + kk, mask=k_ok, other=0.0).to(tl.float32)
    else:
        g = tl.zeros(kk.shape, dtype=tl.float32)
        u = tl.zeros(kk.shape, dtype=tl.float32)
        for s in tl.static_range(GU_SPLIT):
            base = act_ptr + (s * num_pairs + pair).to(tl.int64) * (2 * INTER)
            g += tl.load(base + kk, mask=k_ok, other=0.0)
            u += tl.load(base + INTER + kk, mask=k_ok, other=0.0)
        a = (g / (1.0 + tl.exp(-g)) * u).to(x_ptr.dtype.element_ty).to(tl.float32)
    return a


def align_by_expert(
    expert_ids: torch.Tensor, num_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs sorted by expert, each expert's run padded to a multiple of `block_m`, on the
    device with no host sync. `expert_ids` [P] holds local expert indices (-1: skip the pair).
    Returns (rows [max_blocks * block_m]: pair index, >= P for padding;
    block_expert [max_blocks]: expert of each block, -1 for blocks past the end)."""
    pairs = expert_ids.numel()
    device = expert_ids.device
    max_blocks = grouped_blocks(pairs, num_experts, block_m)
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


def grouped_blocks(pairs: int, num_experts: int, block_m: int) -> int:
    """The grouped grid's row blocks: the worst case of `pairs` over `num_experts` experts,
    each expert's run padded to a multiple of `block_m` (known without a host sync)."""
    return -(-pairs // block_m) + min(num_experts, pairs)


def _gemv_splits(
    pairs: int, tiles: TileConfig, hidden: int, inter: int, device: torch.device
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The GEMV path's split-K: (pieces, length) of the gate/up and of the down kernel."""
    gu, dn = tiles.gate_up, tiles.down
    gate_up = _split(pairs * triton.cdiv(inter, gu.block_n), hidden, gu, device, MAX_GATE_UP_SPLIT)
    return gate_up, _split(pairs * triton.cdiv(hidden, dn.block_n), inter, dn, device)


def _mma_down_split(
    blocks: int, tiles: TileConfig, inter: int, hidden: int, device: torch.device
) -> tuple[int, int]:
    """The MMA down kernel's split-K over `blocks` row blocks (or pairs, per pair)."""
    return _split(blocks * triton.cdiv(hidden, tiles.down.block_n), inter, tiles.down, device)


def variant(
    num_tokens: int, top_k: int, experts: ExpertWeights, device: torch.device
) -> tuple[object, ...]:
    """What of the Triton kernel variants `moe_experts_parts` builds depends on the token
    count: the bucket's tiles, the split-K constexprs, and how Triton specializes the pair
    count (1, or a multiple of 16). Equal values: the same variants."""
    if num_tokens == 0:
        return ()
    num_experts, hidden, inter = experts.w13.shape[0], experts.w13.shape[2], experts.w2.shape[2]
    pairs = num_tokens * top_k
    tiles = pick_tiles(num_tokens, experts.block[1] if experts.is_fp8 else 128)
    if tiles.gemv and not tiles.grouped:
        return tiles, _gemv_splits(pairs, tiles, hidden, inter, device)
    blocks = grouped_blocks(pairs, num_experts, tiles.block_m) if tiles.grouped else pairs
    split = _mma_down_split(blocks, tiles, inter, hidden, device)
    return tiles, split, pairs == 1, pairs % 16 == 0


def _split(
    programs: int, k_dim: int, tiles: KernelTiles, device: torch.device, max_split: int = 16
) -> tuple[int, int]:
    """(pieces the reduction over `k_dim` is cut into, length of each: whole BLOCK_K steps)."""
    k_blocks = triton.cdiv(k_dim, tiles.block_k)
    split = split_k(programs, k_blocks, device, max_split, per_sm=tiles.programs_per_sm)
    k_per_split = triton.cdiv(k_blocks, split) * tiles.block_k
    return triton.cdiv(k_dim, k_per_split), k_per_split


def moe_experts_parts(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    experts: ExpertWeights,
    expert_map: torch.Tensor | None = None,
    tiles: TileConfig | None = None,
) -> PartialSums:
    """sum_k weights[t,k] * w2(silu(w1 x) * w3 x) over each token's K experts, left as
    `PartialSums` [S, T, K, C] (S: the down projection's split-K pieces). x [T, C] (bf16 or
    fp32); weights [T, K] fp32, expert_ids [T, K] (global ids; with `expert_map`, ids are
    mapped to local ones and unowned experts skipped)."""
    num_tokens, top_k = expert_ids.shape
    w13, w2 = experts.w13, experts.w2
    num_experts, hidden, inter = w13.shape[0], w13.shape[2], w2.shape[2]
    if num_tokens == 0:
        empty = torch.zeros((1, 0, top_k, hidden), dtype=torch.float32, device=x.device)
        return PartialSums(empty, x.dtype)
    ids = expert_ids.reshape(-1)
    if expert_map is not None:
        ids = expert_map[ids]
    ids = ids.contiguous()  # the GEMV kernels read the router's int64 ids: no cast launch
    pairs = ids.numel()
    block_rows, block_cols = experts.block
    tiles = tiles or pick_tiles(num_tokens, block_cols if experts.is_fp8 else 128)
    for kernel_tiles in (tiles.gate_up, tiles.down):
        if tiles.gemv:
            if experts.is_fp8 and block_rows % kernel_tiles.block_n:
                raise ValueError(
                    f"GEMV block_n {kernel_tiles.block_n} must divide the FP8 block ({block_rows})"
                )
        elif experts.is_fp8 and block_cols % kernel_tiles.block_k:
            raise ValueError(
                f"block_k {kernel_tiles.block_k} must divide the FP8 block ({block_cols})"
            )
    x = x.contiguous()
    s13 = experts.w13_scale if experts.w13_scale is not None else w13
    s2 = experts.w2_scale if experts.w2_scale is not None else w2
    routing = weights.reshape(-1).float().contiguous()
    if tiles.gemv and not tiles.grouped:
        parts = _gemv(x, ids, routing, experts, s13, s2, tiles, top_k, expert_map is not None)
        return PartialSums(parts.view(-1, num_tokens, top_k, hidden), x.dtype)
    ids = ids.to(torch.int32)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    if tiles.grouped:
        rows, block_expert = align_by_expert(ids, num_experts, tiles.block_m)
        num_blocks, act_rows = block_expert.numel(), block_expert.numel() * tiles.block_m
    else:
        rows, block_expert, num_blocks, act_rows = ids, ids, pairs, pairs
    common = dict(
        BR=block_rows, BC=block_cols, BLOCK_M=tiles.block_m,
        PER_PAIR=not tiles.grouped, HAS_SCALE=experts.is_fp8, PRECISION=precision,
    )  # fmt: skip
    gu = tiles.gate_up
    act = torch.empty((act_rows, inter), dtype=x.dtype, device=x.device)
    _gate_up_kernel[(num_blocks, triton.cdiv(inter, gu.block_n))](
        x, w13, s13, act, rows, block_expert, pairs,
        w13.stride(0), w13.stride(1), s13.stride(0), s13.stride(1),
        TOP_K=top_k, HIDDEN=hidden, INTER=inter, BLOCK_N=gu.block_n, BLOCK_K=gu.block_k,
        num_warps=gu.num_warps, num_stages=gu.num_stages, **common,
        **pdl.launch_args(x.device),
    )  # fmt: skip
    dn = tiles.down
    n_tiles = triton.cdiv(hidden, dn.block_n)
    split, k_per_split = _mma_down_split(num_blocks, tiles, inter, hidden, x.device)
    skipped = expert_map is not None
    partial = (torch.zeros if skipped else torch.empty)(
        (split, pairs, hidden), dtype=torch.float32, device=x.device
    )
    _down_kernel[(num_blocks, n_tiles, split)](
        act, w2, s2, partial, rows, block_expert, routing,
        pairs, w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1),
        HIDDEN=hidden, INTER=inter, BLOCK_N=dn.block_n, BLOCK_K=dn.block_k,
        SPLIT=split, K_PER_SPLIT=k_per_split,
        num_warps=dn.num_warps, num_stages=dn.num_stages, **common,
        **pdl.launch_args(x.device),
    )  # fmt: skip
    return PartialSums(partial.view(split, num_tokens, top_k, hidden), x.dtype)


def _gemv(
    x: torch.Tensor,
    ids: torch.Tensor,
    routing: torch.Tensor,
    experts: ExpertWeights,
    s13: torch.Tensor,
    s2: torch.Tensor,
    tiles: TileConfig,
    top_k: int,
    skipped: bool,
) -> torch.Tensor:
    """The per-pair GEMV kernels: returns the down projection's pieces [SPLIT, pairs, C]."""
    w13, w2 = experts.w13, experts.w2
    hidden, inter = w13.shape[2], w2.shape[2]
    pairs = ids.numel()
    block_rows, block_cols = experts.block
    gu, dn = tiles.gate_up, tiles.down
    n_tiles = triton.cdiv(inter, gu.block_n)
    evict = streamed_eviction("moe", x.device)
    (gu_split, gu_k), (split, k_per_split) = _gemv_splits(pairs, tiles, hidden, inter, x.device)
    if gu_split == 1:
        act = torch.empty((pairs, inter), dtype=x.dtype, device=x.device)
    else:
        act = torch.empty((gu_split, pairs, 2 * inter), dtype=torch.float32, device=x.device)
    _gate_up_gemv_kernel[(pairs, n_tiles, gu_split)](
        x, w13, s13, act, ids, w13.stride(0), w13.stride(1), s13.stride(0), s13.stride(1),
        TOP_K=top_k, HIDDEN=hidden, INTER=inter, BR=block_rows, BC=block_cols,
        BLOCK_N=gu.block_n, BLOCK_K=gu.block_k, SPLIT=gu_split, K_PER_SPLIT=gu_k,
        HAS_SCALE=experts.is_fp8, EVICT=evict, num_warps=gu.num_warps,
        num_stages=gu.num_stages,
        **pdl.launch_args(x.device),
    )  # fmt: skip
    n_tiles = triton.cdiv(hidden, dn.block_n)
    out = (torch.zeros if skipped else torch.empty)(
        (split, pairs, hidden), dtype=torch.float32, device=x.device
    )
    _down_gemv_kernel[(pairs, n_tiles, split)](
        act, x, w2, s2, out, ids, routing, w2.stride(0), w2.stride(1), s2.stride(0),
        s2.stride(1), HIDDEN=hidden, INTER=inter, BR=block_rows, BC=block_cols,
        BLOCK_N=dn.block_n, BLOCK_K=dn.block_k, SPLIT=split, K_PER_SPLIT=k_per_split,
        GU_SPLIT=gu_split, HAS_SCALE=experts.is_fp8, EVICT=evict,
        num_warps=dn.num_warps, num_stages=dn.num_stages, **pdl.launch_args(x.device),
    )  # fmt: skip
    return out


def moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    experts: ExpertWeights,
    expert_map: torch.Tensor | None = None,
    tiles: TileConfig | None = None,
) -> torch.Tensor:
    """`moe_experts_parts`, summed: [T, C] in x's dtype."""
    return moe_experts_parts(x, weights, expert_ids, experts, expert_map, tiles).materialize()
