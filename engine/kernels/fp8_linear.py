"""y = x W^T for an FP8 weight with block scales (the checkpoint's float8_e4m3fn + scale_inv),
in Triton, without a dequantized copy: each weight tile is converted in registers, multiplied
by the activations on the tensor cores, and the partial product scaled by its block's scale.

The weight is the left operand (the output features run along the MMA's M), so a decode step
of one token still fills the MMA with weight rows. For few output tiles (o_proj at batch 1) the
reduction dim is split over programs: `fp8_linear_parts` leaves the pieces as `PartialSums` for
the consumer to add up (no extra launch); `fp8_linear` sums them in a fixed order itself.
Tiles per row-count bucket come from `LINEAR_TILES` (measured on an H200 by
scripts/tune_kernels.py). The readable version is
`F.linear(x, reference.dequantize_fp8_block(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels import pdl
from m2agent.engine.kernels.cache_policy import streamed_eviction
from m2agent.engine.kernels.occupancy import split_k, split_k_waves
from m2agent.engine.kernels.partial_sums import PartialSums, PendingNorm
from m2agent.engine.kernels.pdl import wait_for_inputs


@dataclass(frozen=True, slots=True)
class LinearTiles:
    """With `gemv`, one input row per program and plain FMAs (block_m unused): no MMA padded
    to 16 rows and no shared-memory round trip, for decode; else BLOCK_M rows on the MMA."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    programs_per_sm: int  # split-K target: cut the reduction until this many programs per SM
    gemv: bool = False


# Per number of rows (upper bound). Measured on an H200 by scripts/tune_kernels.py
# (docs/bench/i12/tune-h200*.json): one row by GEMV, then the MMA. Re-checked in the whole
# batch-1 step (scripts/ab_decode.py, docs/bench/i12/round5 and round6): with the weights
# loaded evict-first, 512-column steps or 64-row tiles are 0.4-0.5 us per layer slower; a
# split-K target of 3 programs per SM rather than 4 0.4-0.5 us faster, in three runs, and 2
# per SM 2.1 us slower. The GEMV's pieces then follow `occupancy.split_k_waves` (M2's q/k/v
# in 3, o_proj in 8).
LINEAR_TILES: tuple[tuple[int, LinearTiles], ...] = (
    (1, LinearTiles(1, 32, 256, 4, 2, 3, gemv=True)),
    (16, LinearTiles(16, 64, 128, 4, 3, 2)),
    (32, LinearTiles(32, 64, 128, 4, 3, 4)),
    (64, LinearTiles(64, 64, 128, 4, 3, 4)),
    (1 << 62, LinearTiles(64, 128, 128, 4, 3, 4)),
)


def pick_tiles(num_rows: int) -> LinearTiles:
    return next(t for limit, t in LINEAR_TILES if num_rows <= limit)


@triton.jit
def _fp8_linear_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K] fp8
    s_ptr,  # [ceil(N/BR), ceil(K/BC)] fp32
    out_ptr,  # [SPLIT, M, N]: fp32 partial sums, or x's dtype when SPLIT == 1
    M,
    N: tl.constexpr,
    K: tl.constexpr,
    stride_xm,
    stride_wn,
    stride_sn,
    K_PER_SPLIT: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_inputs(USE_PDL)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    k_start = split * K_PER_SPLIT
    for step in range(0, K_PER_SPLIT, BLOCK_K):
        k0 = k_start + step
        kk = k0 + k
        k_ok = kk < K
        a = tl.load(
            x_ptr + m[None, :] * stride_xm + kk[:, None],
            mask=m_ok[None, :] & k_ok[:, None],
            other=0.0,
        )
        w = tl.load(
            w_ptr + n[:, None] * stride_wn + kk[None, :],
            mask=n_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        p = tl.dot(w.to(a.dtype), a, input_precision=PRECISION)
        s = tl.load(s_ptr + (n // BR) * stride_sn + k0 // BC, mask=n_ok, other=0.0)
        acc += p * s[:, None]
    out = out_ptr + split.to(tl.int64) * M * N + m[None, :] * N + n[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


@triton.jit
def _fp8_gemv_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K] fp8
    s_ptr,  # [ceil(N/BR), ceil(K/BC)] fp32
    out_ptr,  # [SPLIT, M, N]: fp32 pieces, or x's dtype when SPLIT == 1
    M,
    N: tl.constexpr,
    K: tl.constexpr,
    stride_xm,
    stride_wn,
    stride_sn,
    K_PER_SPLIT: tl.constexpr,
    BR: tl.constexpr,
    BC: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    EVICT: tl.constexpr,  # the weight loads' L2 policy (`cache_policy`)
    sq_ptr,  # with NORM: [SLICES] fp32 sums of squares of x's column slices
    nw_ptr,  # with NORM: [K] the norm's weight
    eps,
    NORM: tl.constexpr,  # x is a `PendingNorm`'s row: normalise it as it loads
    SLICES: tl.constexpr,
    SLICES_PAD: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """One row of x times BLOCK_N weight rows (all in one scale row-block, so each step's
    scales fold into the activations). With PDL the first weight tile and its scales load
    before the wait (no kernel of the step writes them). With NORM, x is the residual row
    and each value is normalised as it loads, rounded where the add + RMSNorm kernel rounds."""
    row = tl.program_id(0)
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    k = tl.arange(0, BLOCK_K)
    scale_row = (pid_n * BLOCK_N) // BR
    kk = split * K_PER_SPLIT + k
    k_ok = kk < K
    w, s = _gemv_tile(w_ptr, s_ptr, n, n_ok, kk, k_ok, scale_row, stride_wn, stride_sn, BC, EVICT)
    wait_for_inputs(USE_PDL)
    x_row = x_ptr + row.to(tl.int64) * stride_xm
    rstd = 1.0
    if NORM:
        j = tl.arange(0, SLICES_PAD)
        squares = tl.load(sq_ptr + j, mask=j < SLICES, other=0.0)
        rstd = tl.rsqrt(tl.sum(squares, 0) / K + eps)
    a = _gemv_input(x_row, kk, k_ok, rstd, nw_ptr, NORM)
    acc = _gemv_dot(w, s, a)
    for step in range(BLOCK_K, K_PER_SPLIT, BLOCK_K):
        kk = split * K_PER_SPLIT + step + k
        k_ok = kk < K
        w, s = _gemv_tile(
            w_ptr, s_ptr, n, n_ok, kk, k_ok, scale_row, stride_wn, stride_sn, BC, EVICT
        )
        acc += _gemv_dot(w, s, _gemv_input(x_row, kk, k_ok, rstd, nw_ptr, NORM))
    out = out_ptr + (split.to(tl.int64) * M + row) * N + n
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _gemv_tile(
    w_ptr, s_ptr, n, n_ok, kk, k_ok, scale_row, stride_wn, stride_sn, BC: tl.constexpr,
    EVICT: tl.constexpr,
):  # fmt: skip
    """Weight rows `n` x columns `kk`, and the block scale of each column (one row-block)."""
    s = tl.load(s_ptr + scale_row * stride_sn + kk // BC, mask=k_ok, other=0.0)
    w_mask = n_ok[:, None] & k_ok[None, :]
    w = tl.load(
        w_ptr + n[:, None] * stride_wn + kk[None, :], mask=w_mask, other=0.0,
        eviction_policy=EVICT,
    )  # fmt: skip
    return w, s


@triton.jit
def _gemv_input(x_row, kk, k_ok, rstd, nw_ptr, NORM: tl.constexpr):
    """Columns `kk` of the row in fp32; with NORM, `nw * x * rstd` rounded to x's type at
    each step as the add + RMSNorm kernel rounds it."""
    a = tl.load(x_row + kk, mask=k_ok, other=0.0).to(tl.float32)
    if NORM:
        like = x_row.dtype.element_ty
        nw = tl.load(nw_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)
        a = (nw * (a * rstd).to(like).to(tl.float32)).to(like).to(tl.float32)
    return a


@triton.jit
def _gemv_dot(w, s, a):
    return tl.sum(w.to(tl.float32) * (a * s)[None, :], 1)


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """How `_launch` runs an [M, K] x [N, K]^T product: the tiles of M's bucket, the reduction
    step, and the split-K (pieces, and reduction length per piece)."""

    tiles: LinearTiles
    block_m: int  # rows per program (1 for the GEMV)
    block_k: int
    split: int
    k_per_split: int


def plan(
    num_rows: int,
    n_dim: int,
    k_dim: int,
    block: tuple[int, int],
    device: torch.device,
    tiles: LinearTiles | None = None,
) -> LaunchPlan:
    block_rows, block_cols = block
    tiles = tiles or pick_tiles(num_rows)
    if tiles.gemv:
        if block_rows % tiles.block_n:
            raise ValueError(f"GEMV block_n {tiles.block_n} must divide the FP8 block rows")
        block_k = tiles.block_k
    else:
        block_k = min(tiles.block_k, block_cols)
        if block_cols % block_k:
            raise ValueError(f"FP8 block columns {block_cols} must be a multiple of {block_k}")
    block_m = 1 if tiles.gemv else tiles.block_m
    programs = triton.cdiv(num_rows, block_m) * triton.cdiv(n_dim, tiles.block_n)
    k_blocks = triton.cdiv(k_dim, block_k)
    if tiles.gemv:
        split = split_k_waves(programs, k_blocks, device, per_sm=tiles.programs_per_sm)
    else:
        split = split_k(programs, k_blocks, device, per_sm=tiles.programs_per_sm)
    k_per_split = triton.cdiv(k_blocks, split) * block_k
    return LaunchPlan(tiles, block_m, block_k, triton.cdiv(k_dim, k_per_split), k_per_split)


def variant(
    num_rows: int, n_dim: int, k_dim: int, block: tuple[int, int], device: torch.device
) -> tuple[object, ...]:
    """What of the Triton kernel variant this product builds depends on the row count: its
    tiles, split-K (a constexpr; pieces in fp32 or not) and how Triton specializes M (1, or a
    multiple of 16). Equal values: the same variant (the start-up warm-up builds one each)."""
    p = plan(num_rows, n_dim, k_dim, block, device)
    return p.tiles, p.block_k, p.k_per_split, p.split > 1, num_rows == 1, num_rows % 16 == 0


def _launch(
    x2: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    tiles: LinearTiles | None,
    always_fp32: bool,
    norm: PendingNorm | None = None,
) -> torch.Tensor:
    """Returns [S, M, N]: fp32 pieces, or (S == 1 and not `always_fp32`) x's dtype. With
    `norm` (x2 is its row, and the tiles' GEMV serves it) the GEMV normalises x2 as it
    loads."""
    num_rows, k_dim = x2.shape
    n_dim = weight.shape[0]
    block_rows, block_cols = block
    p = plan(num_rows, n_dim, k_dim, block, x2.device, tiles)
    tiles, block_m, block_k, split, k_per_split = (
        p.tiles, p.block_m, p.block_k, p.split, p.k_per_split
    )  # fmt: skip
    dtype = torch.float32 if split > 1 or always_fp32 else x2.dtype
    out = torch.empty((split, num_rows, n_dim), dtype=dtype, device=x2.device)
    grid = (triton.cdiv(num_rows, block_m), triton.cdiv(n_dim, tiles.block_n), split)
    if tiles.gemv:
        squares, norm_weight, eps = (
            (norm.squares, norm.weight, norm.eps) if norm is not None else (out, x2, 0.0)
        )  # (unread without a norm)
        _fp8_gemv_kernel[grid](
            x2, weight, scale_inv, out, num_rows, n_dim, k_dim,
            x2.stride(0), weight.stride(0), scale_inv.stride(0),
            K_PER_SPLIT=k_per_split, BR=block_rows, BC=block_cols,
            BLOCK_N=tiles.block_n, BLOCK_K=block_k, EVICT=streamed_eviction("dense", x2.device),
            sq_ptr=squares, nw_ptr=norm_weight, eps=eps, NORM=norm is not None,
            SLICES=squares.shape[-1] if norm is not None else 1,
            SLICES_PAD=triton.next_power_of_2(squares.shape[-1]) if norm is not None else 1,
            num_warps=tiles.num_warps, num_stages=tiles.num_stages, **pdl.launch_args(x2.device),
        )  # fmt: skip
        return out
    if norm is not None:
        raise ValueError("only the one-row GEMV normalises as it loads")
    _fp8_linear_kernel[grid](
        x2, weight, scale_inv, out, num_rows, n_dim, k_dim,
        x2.stride(0), weight.stride(0), scale_inv.stride(0),
        K_PER_SPLIT=k_per_split, BR=block_rows, BC=block_cols,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=block_k,
        PRECISION="ieee" if x2.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps, num_stages=tiles.num_stages, **pdl.launch_args(x2.device),
    )  # fmt: skip
    return out


def _rows(x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    tiles: LinearTiles | None = None,
) -> torch.Tensor:
    """x [..., K] (bf16 or fp32) @ weight [N, K] (float8_e4m3fn, `scale_inv` per
    `block` = (rows, cols)) transposed -> [..., N] in x's dtype."""
    lead, n_dim = x.shape[:-1], weight.shape[0]
    x2 = _rows(x)
    if x2.shape[0] == 0:
        return torch.empty((*lead, n_dim), dtype=x.dtype, device=x.device)
    out = _launch(x2, weight, scale_inv, block, tiles, always_fp32=False)
    out = out[0] if out.shape[0] == 1 else out.sum(dim=0).to(x.dtype)
    return out.view(*lead, n_dim)


def takes_pending_norm(num_rows: int, tiles: LinearTiles | None = None) -> bool:
    """Whether `fp8_linear_parts` of `num_rows` rows finishes a `PendingNorm` itself."""
    return num_rows == 1 and (tiles or pick_tiles(num_rows)).gemv


def fp8_linear_parts(
    x: torch.Tensor | PendingNorm,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    tiles: LinearTiles | None = None,
) -> PartialSums:
    """The same product for x [T, K], left as fp32 pieces of the reduction for the consumer
    to add up (`PartialSums`; one piece when the reduction is not split). x may be a
    `PendingNorm`: the one-row GEMV normalises it as it loads (else it is materialised)."""
    if isinstance(x, PendingNorm):
        if takes_pending_norm(x.x.shape[0], tiles) and x.x.is_contiguous():
            out = _launch(x.x, weight, scale_inv, block, tiles, always_fp32=True, norm=x)
            return PartialSums(out.unsqueeze(2), x.x.dtype)
        x = x.materialize()
    x2 = _rows(x)
    if x2.shape[0] == 0:
        empty = torch.empty((1, 0, 1, weight.shape[0]), dtype=torch.float32, device=x.device)
        return PartialSums(empty, x.dtype)
    out = _launch(x2, weight, scale_inv, block, tiles, always_fp32=True)
    return PartialSums(out.unsqueeze(2), x.dtype)
