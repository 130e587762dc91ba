"""The decode step's small ops, fused in Triton so a batch-1 step is a few launches per layer
instead of dozens: residual add + RMSNorm; M2's full-width QK-norm + partial RoPE + KV-cache
write; the router's sigmoid + biased top-k + renormalised weights.

Each rounds where the reference rounds (sums kept in fp32, every stored value in the model's
dtype), so on fp32 models they agree to the last bits and on bf16 models within a rounding
step. The readable versions are `reference.add_rms_norm`, `reference.qk_norm_rope_store` and
`reference.route`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,  # [T, C] residual stream, updated in place to x + delta (when HAS_DELTA)
    delta_ptr,  # [T, C]
    w_ptr,  # [C]
    out_ptr,  # [T, C] normed
    eps,
    C: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_DELTA: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < C
    x = tl.load(x_ptr + row * C + c, mask=ok, other=0.0)
    if HAS_DELTA:
        x = (x.to(tl.float32) + tl.load(delta_ptr + row * C + c, mask=ok, other=0.0)).to(
            x_ptr.dtype.element_ty
        )
        tl.store(x_ptr + row * C + c, x, mask=ok)
    x32 = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x32 * x32, 0) / C + eps)
    normed = (x32 * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * C + c, (w * normed).to(out_ptr.dtype.element_ty), mask=ok)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta)); x [T, C] contiguous is updated in place."""
    num_rows, width = x.shape
    out = torch.empty_like(x)
    if num_rows == 0:
        return x, out
    block = triton.next_power_of_2(width)
    _add_rms_norm_kernel[(num_rows,)](
        x, delta if delta is not None else x, weight, out, eps,
        C=width, BLOCK=block, HAS_DELTA=delta is not None, num_warps=8 if block >= 2048 else 4,
    )  # fmt: skip
    return x, out


@triton.jit
def _rms_rope(
    x_ptr,  # one token's [H * D] row
    w_ptr,  # [H * D]
    cos_ptr,  # this token's [R]
    sin_ptr,
    eps,
    H: tl.constexpr,
    H_PAD: tl.constexpr,
    D: tl.constexpr,
    R: tl.constexpr,
):
    """The row normalised over all H*D values, times w, then each head's first R dims
    rotated (NeoX halves); returned [H_PAD, D] in fp32 holding the rounded values."""
    h = tl.arange(0, H_PAD)
    d = tl.arange(0, D)
    ok = (h < H)[:, None] & (d < D)[None, :]
    idx = h[:, None] * D + d[None, :]
    x = tl.load(x_ptr + idx, mask=ok, other=0.0)
    dtype = x.dtype
    x32 = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(tl.sum(x32 * x32, 1), 0) / (H * D) + eps)
    w = tl.load(w_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    y = (w * (x32 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    half: tl.constexpr = R // 2
    rotary = d < R
    partner = tl.where(d < half, d + half, d - half)
    pidx = h[:, None] * D + partner[None, :]
    pmask = ok & rotary[None, :]
    xp = tl.load(x_ptr + pidx, mask=pmask, other=0.0).to(tl.float32)
    wp = tl.load(w_ptr + pidx, mask=pmask, other=0.0).to(tl.float32)
    yp = (wp * (xp * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    rotated = tl.where((d < half)[None, :], -yp, yp)
    cos = tl.load(cos_ptr + d, mask=rotary, other=1.0).to(tl.float32)
    sin = tl.load(sin_ptr + d, mask=rotary, other=0.0).to(tl.float32)
    a = (y * cos[None, :]).to(dtype).to(tl.float32)
    b = (rotated * sin[None, :]).to(dtype).to(tl.float32)
    return tl.where(rotary[None, :], a + b, y)


@triton.jit
def _qk_norm_rope_store_kernel(
    q_ptr,  # [T, Hq * D], normed and rotated in place
    k_ptr,  # [T, Hkv * D]
    v_ptr,  # [T, Hkv * D]
    qw_ptr,
    kw_ptr,
    cos_ptr,  # [T, R]
    sin_ptr,
    k_cache_ptr,  # [slots, Hkv, D]
    v_cache_ptr,
    slot_ptr,  # [T] int64
    eps,
    stride_q,
    stride_k,
    stride_v,
    HQ: tl.constexpr,
    HQ_PAD: tl.constexpr,
    HKV: tl.constexpr,
    HKV_PAD: tl.constexpr,
    D: tl.constexpr,
    R: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    cos_row = cos_ptr + t * R
    sin_row = sin_ptr + t * R
    d = tl.arange(0, D)
    q = _rms_rope(q_ptr + t * stride_q, qw_ptr, cos_row, sin_row, eps, HQ, HQ_PAD, D, R)
    hq = tl.arange(0, HQ_PAD)
    q_ok = (hq < HQ)[:, None] & (d < D)[None, :]
    tl.store(
        q_ptr + t * stride_q + hq[:, None] * D + d[None, :],
        q.to(q_ptr.dtype.element_ty),
        mask=q_ok,
    )
    k = _rms_rope(k_ptr + t * stride_k, kw_ptr, cos_row, sin_row, eps, HKV, HKV_PAD, D, R)
    hk = tl.arange(0, HKV_PAD)
    k_ok = (hk < HKV)[:, None] & (d < D)[None, :]
    slot = tl.load(slot_ptr + t)
    at = slot * (HKV * D) + hk[:, None] * D + d[None, :]
    tl.store(k_cache_ptr + at, k.to(k_cache_ptr.dtype.element_ty), mask=k_ok)
    v = tl.load(v_ptr + t * stride_v + hk[:, None] * D + d[None, :], mask=k_ok, other=0.0)
    tl.store(v_cache_ptr + at, v.to(v_cache_ptr.dtype.element_ty), mask=k_ok)


def qk_norm_rope_store(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_weight: torch.Tensor,
    k_weight: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    eps: float,
    head_dim: int,
) -> torch.Tensor:
    """q [T, Hq*D], k, v [T, Hkv*D] (rows may be strided views): q and k RMS-normed over their
    full width, their heads' first R dims rotated; k and v written to the caches
    [N_blocks, page, Hkv, D] at `slot_mapping`. Returns q as [T, Hq, D] (updated in place)."""
    num_tokens = q.shape[0]
    num_heads, num_kv_heads = q.shape[1] // head_dim, k.shape[1] // head_dim
    if num_tokens:
        _qk_norm_rope_store_kernel[(num_tokens,)](
            q, k, v, q_weight, k_weight, cos.contiguous(), sin.contiguous(),
            k_cache, v_cache, slot_mapping, eps, q.stride(0), k.stride(0), v.stride(0),
            HQ=num_heads, HQ_PAD=triton.next_power_of_2(num_heads),
            HKV=num_kv_heads, HKV_PAD=triton.next_power_of_2(num_kv_heads),
            D=head_dim, R=cos.shape[-1], num_warps=8,
        )  # fmt: skip
    return q.view(num_tokens, num_heads, head_dim)


@triton.jit
def _route_kernel(
    logits_ptr,  # [T, E] fp32
    bias_ptr,  # [E] fp32
    weights_ptr,  # out [T, K] fp32
    ids_ptr,  # out [T, K] int64
    E: tl.constexpr,
    E_PAD: tl.constexpr,
    TOP_K: tl.constexpr,
    K_PAD: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, E_PAD)
    kk = tl.arange(0, K_PAD)
    picked_scores = tl.zeros((K_PAD,), dtype=tl.float32)
    ok = e < E
    scores = tl.sigmoid(tl.load(logits_ptr + t * E + e, mask=ok, other=0.0))
    biased = tl.where(ok, scores + tl.load(bias_ptr + e, mask=ok, other=0.0), float("-inf"))
    total = 0.0
    for k in tl.static_range(TOP_K):
        best = tl.argmax(biased, 0)
        picked = e == best
        score = tl.sum(tl.where(picked, scores, 0.0), 0)
        tl.store(ids_ptr + t * TOP_K + k, best.to(tl.int64))
        picked_scores = tl.where(kk == k, score, picked_scores)
        total += score
        biased = tl.where(picked, float("-inf"), biased)
    tl.store(weights_ptr + t * TOP_K + kk, picked_scores / total, mask=kk < TOP_K)


def route(
    x: torch.Tensor, gate_weight: torch.Tensor, correction_bias: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """M2's router in two launches: the fp32 logits (cuBLAS), then sigmoid, biased top-k and
    renormalised unbiased weights in one kernel. Returns weights [T, K] fp32, ids [T, K]."""
    logits = torch.nn.functional.linear(x.float(), gate_weight.float())
    num_tokens, num_experts = logits.shape
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int64, device=x.device)
    if num_tokens:
        _route_kernel[(num_tokens,)](
            logits, correction_bias.float().contiguous(), weights, ids,
            E=num_experts, E_PAD=triton.next_power_of_2(num_experts), TOP_K=top_k,
            K_PAD=triton.next_power_of_2(top_k), num_warps=4,
        )  # fmt: skip
    return weights, ids
