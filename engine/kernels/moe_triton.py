"""MoE experts for a few tokens (decode), in Triton: one pass over each chosen expert's weights.

At batch 1 an M2 decode step reads 8 experts' weights per layer and does almost no arithmetic,
so the job is to stream those weights at full memory bandwidth. Two GEMV-style kernels:
gate/up with SwiGLU fused (out: the activations), then down with the routing weight applied;
the K experts' outputs of each token are then summed. Routing is read on the device: no host
sync, so CUDA graphs capture it. The readable version is `reference.moe_experts`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_TOKENS = 16  # above this, grouped GEMMs reuse each expert's weights across tokens


@triton.jit
def _gate_up_kernel(
    x_ptr,  # [T, C]
    ids_ptr,  # [T * K] int64: expert of each (token, slot)
    w13_ptr,  # [E, 2I, C]
    act_ptr,  # [T * K, I] fp32 out: silu(w1 x) * (w3 x)
    TOP_K: tl.constexpr,
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pair = tl.program_id(0)
    tile = tl.program_id(1)
    token = pair // TOP_K
    expert = tl.load(ids_ptr + pair)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < INTER
    cols = tl.arange(0, BLOCK_K)
    base = w13_ptr + expert * (2 * INTER * HIDDEN)
    gate = tl.zeros((BLOCK_N,), dtype=tl.float32)
    up = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(0, HIDDEN, BLOCK_K):
        c = start + cols
        c_ok = c < HIDDEN
        x = tl.load(x_ptr + token * HIDDEN + c, mask=c_ok, other=0.0).to(tl.float32)
        mask = row_ok[:, None] & c_ok[None, :]
        w1 = tl.load(base + rows[:, None] * HIDDEN + c[None, :], mask=mask, other=0.0)
        w3 = tl.load(base + (rows[:, None] + INTER) * HIDDEN + c[None, :], mask=mask, other=0.0)
        gate += tl.sum(w1.to(tl.float32) * x[None, :], axis=1)
        up += tl.sum(w3.to(tl.float32) * x[None, :], axis=1)
    act = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(act_ptr + pair * INTER + rows, act, mask=row_ok)


@triton.jit
def _down_kernel(
    act_ptr,  # [T * K, I] fp32
    ids_ptr,  # [T * K]
    weights_ptr,  # [T * K] fp32 routing weights
    w2_ptr,  # [E, C, I]
    out_ptr,  # [T * K, C] fp32: each (token, slot)'s weighted expert output
    HIDDEN: tl.constexpr,
    INTER: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pair = tl.program_id(0)
    tile = tl.program_id(1)
    expert = tl.load(ids_ptr + pair)
    rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < HIDDEN
    cols = tl.arange(0, BLOCK_K)
    base = w2_ptr + expert * (HIDDEN * INTER)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(0, INTER, BLOCK_K):
        i = start + cols
        i_ok = i < INTER
        a = tl.load(act_ptr + pair * INTER + i, mask=i_ok, other=0.0)
        w = tl.load(
            base + rows[:, None] * INTER + i[None, :],
            mask=row_ok[:, None] & i_ok[None, :],
            other=0.0,
        )
        acc += tl.sum(w.to(tl.float32) * a[None, :], axis=1)
    acc = acc * tl.load(weights_ptr + pair)
    tl.store(out_ptr + pair * HIDDEN + rows, acc, mask=row_ok)


def moe_experts_small_batch(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """x [T, C]; weights, expert_ids [T, K]; w13 [E, 2I, C]; w2 [E, C, I] -> [T, C]."""
    num_tokens, top_k = expert_ids.shape
    hidden, inter = x.shape[1], w2.shape[2]
    pairs = num_tokens * top_k
    ids = expert_ids.reshape(-1).contiguous()
    act = torch.empty((pairs, inter), dtype=torch.float32, device=x.device)
    block_n, block_k = 32, 256
    _gate_up_kernel[(pairs, triton.cdiv(inter, block_n))](
        x.contiguous(), ids, w13, act,
        TOP_K=top_k, HIDDEN=hidden, INTER=inter, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip
    partial = torch.empty((pairs, hidden), dtype=torch.float32, device=x.device)
    _down_kernel[(pairs, triton.cdiv(hidden, block_n))](
        act, ids, weights.reshape(-1).float().contiguous(), w2, partial,
        HIDDEN=hidden, INTER=inter, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4,
    )  # fmt: skip
    return partial.view(num_tokens, top_k, hidden).sum(dim=1).to(x.dtype)
