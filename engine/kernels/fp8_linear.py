"""y = x W^T for an FP8 weight with block scales (the checkpoint's float8_e4m3fn + scale_inv),
in Triton, without a dequantized copy: each weight tile is converted in registers, multiplied
by the activations on the tensor cores, and the partial product scaled by its block's scale.

The weight is the left operand (the output features run along the MMA's M), so a decode step
of one token still fills the MMA with weight rows. For few output tiles (o_proj at batch 1) the
reduction dim is split over programs and the partial sums added in a fixed order afterwards.
The readable version is `F.linear(x, reference.dequantize_fp8_block(...))`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels.occupancy import split_k


@triton.jit
def _fp8_linear_kernel(
    x_ptr,  # [M, K]
    w_ptr,  # [N, K] fp8
    s_ptr,  # [ceil(N/BR), ceil(K/BC)] fp32
    out_ptr,  # [SPLIT, M, N] (fp32 partials) or [M, N] (x's dtype) when SPLIT == 1
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
):
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


def fp8_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
) -> torch.Tensor:
    """x [..., K] (bf16 or fp32) @ weight [N, K] (float8_e4m3fn, `scale_inv` per
    `block` = (rows, cols)) transposed -> [..., N] in x's dtype."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    num_rows, k_dim = x2.shape
    n_dim = weight.shape[0]
    if num_rows == 0:
        return torch.empty((*lead, n_dim), dtype=x.dtype, device=x.device)
    block_rows, block_cols = block
    block_m = 16 if num_rows <= 16 else 32 if num_rows <= 32 else 64
    block_n = 64 if num_rows <= 64 else 128
    block_k = min(128, block_cols)
    if block_cols % block_k:
        raise ValueError(f"FP8 block columns {block_cols} must be a multiple of {block_k}")
    tiles = triton.cdiv(num_rows, block_m) * triton.cdiv(n_dim, block_n)
    k_blocks = triton.cdiv(k_dim, block_k)
    split = split_k(tiles, k_blocks, x.device)
    k_per_split = triton.cdiv(k_blocks, split) * block_k
    split = triton.cdiv(k_dim, k_per_split)
    if split == 1:
        out = torch.empty((num_rows, n_dim), dtype=x.dtype, device=x.device)
    else:
        out = torch.empty((split, num_rows, n_dim), dtype=torch.float32, device=x.device)
    _fp8_linear_kernel[(triton.cdiv(num_rows, block_m), triton.cdiv(n_dim, block_n), split)](
        x2, weight, scale_inv, out, num_rows, n_dim, k_dim,
        x2.stride(0), weight.stride(0), scale_inv.stride(0),
        K_PER_SPLIT=k_per_split, BR=block_rows, BC=block_cols,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=4, num_stages=3,
    )  # fmt: skip
    if split > 1:
        out = out.sum(dim=0).to(x.dtype)
    return out.view(*lead, n_dim)
