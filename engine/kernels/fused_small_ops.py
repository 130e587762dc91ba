"""The decode step's small ops, fused in Triton so a batch-1 step is a few launches per layer
instead of dozens: residual add + RMSNorm; M2's full-width QK-norm + partial RoPE + KV-cache
write; the router's sigmoid + biased top-k + renormalised weights.

Each rounds where the reference rounds (sums kept in fp32, every stored value in the model's
dtype), so on fp32 models they agree to the last bits and on bf16 models within a rounding
step. The readable versions are `reference.add_rms_norm`, `reference.qk_norm_rope_store` and
`reference.route`. The add + RMSNorm and the QK-norm kernels also take their input as
fp32 pieces of a split-K product (`PartialSums`) and sum them, in a fixed order, as they read:
the producer needs no reduction launch of its own.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels.partial_sums import PartialSums


@triton.jit
def _summed(
    ptr, offsets, mask, stride_split, stride_group, SPLIT: tl.constexpr, GROUP: tl.constexpr, like
):
    """The value at `offsets`: the sum of SPLIT x GROUP fp32 pieces (or one stored value),
    rounded to `like`'s element type, returned in fp32."""
    total = tl.zeros_like(offsets).to(tl.float32)
    for s in tl.static_range(SPLIT):
        for g in tl.static_range(GROUP):
            at = ptr + s * stride_split + g * stride_group + offsets
            total += tl.load(at, mask=mask, other=0.0).to(tl.float32)
    return total.to(like.dtype.element_ty).to(tl.float32)


@triton.jit
def _add_rms_norm_kernel(
    x_ptr,  # [T, C] residual stream, updated in place to x + delta (when HAS_DELTA)
    delta_ptr,  # [T, C], or fp32 pieces [SPLIT, T, GROUP, C] to sum first
    w_ptr,  # [C]
    out_ptr,  # [T, C] normed
    eps,
    stride_d_split,
    stride_d_tok,
    stride_d_group,
    C: tl.constexpr,
    BLOCK: tl.constexpr,
    HAS_DELTA: tl.constexpr,
    SPLIT: tl.constexpr,
    GROUP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < C
    x = tl.load(x_ptr + row * C + c, mask=ok, other=0.0)
    if HAS_DELTA:
        delta = _summed(
            delta_ptr, row * stride_d_tok + c, ok, stride_d_split, stride_d_group, SPLIT, GROUP,
            x_ptr,
        )  # fmt: skip
        x = (x.to(tl.float32) + delta).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * C + c, x, mask=ok)
    x32 = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x32 * x32, 0) / C + eps)
    normed = (x32 * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * C + c, (w * normed).to(out_ptr.dtype.element_ty), mask=ok)


def _pieces(value: torch.Tensor | PartialSums) -> tuple[torch.Tensor, int, int, int, int, int]:
    """(tensor, split stride, token stride, group stride, SPLIT, GROUP) for `_summed`."""
    if isinstance(value, PartialSums):
        p = value.parts
        return p, p.stride(0), p.stride(1), p.stride(2), p.shape[0], p.shape[2]
    if value.stride(-1) != 1:
        value = value.contiguous()
    return value, 0, value.stride(0), 0, 1, 1


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | PartialSums | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + delta, rms_norm(x + delta)); x [T, C] contiguous is updated in place. `delta` may
    be left as pieces (`PartialSums`): they are summed here, then rounded to x's dtype."""
    num_rows, width = x.shape
    out = torch.empty_like(x)
    if num_rows == 0:
        return x, out
    block = triton.next_power_of_2(width)
    d, stride_split, stride_tok, stride_group, split, group = _pieces(
        delta if delta is not None else x
    )
    _add_rms_norm_kernel[(num_rows,)](
        x, d, weight, out, eps, stride_split, stride_tok, stride_group,
        C=width, BLOCK=block, HAS_DELTA=delta is not None, SPLIT=split, GROUP=group,
        num_warps=8 if block >= 2048 else 4,
    )  # fmt: skip
    return x, out


@triton.jit
def _rms_rope(
    x_ptr,  # one token's [H * D] row, or the first of SPLIT fp32 pieces of it
    stride_split,
    like_ptr,  # rounds to this pointer's element type where the reference rounds
    w_ptr,  # [H * D]
    cos_ptr,  # this token's [R]
    sin_ptr,
    eps,
    SPLIT: tl.constexpr,
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
    dtype = like_ptr.dtype.element_ty
    x32 = _summed(x_ptr, idx, ok, stride_split, 0, SPLIT, 1, like_ptr)
    rstd = tl.rsqrt(tl.sum(tl.sum(x32 * x32, 1), 0) / (H * D) + eps)
    w = tl.load(w_ptr + idx, mask=ok, other=0.0).to(tl.float32)
    y = (w * (x32 * rstd).to(dtype).to(tl.float32)).to(dtype).to(tl.float32)
    half: tl.constexpr = R // 2
    rotary = d < R
    partner = tl.where(d < half, d + half, d - half)
    pidx = h[:, None] * D + partner[None, :]
    pmask = ok & rotary[None, :]
    xp = _summed(x_ptr, pidx, pmask, stride_split, 0, SPLIT, 1, like_ptr)
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
    q_ptr,  # [T, Hq * D] rows, or fp32 pieces [SPLIT_Q, T, ...] of them
    k_ptr,  # [T, Hkv * D] likewise
    v_ptr,  # [T, Hkv * D] likewise
    q_out_ptr,  # out [T, Hq * D]: q normed and rotated
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
    split_stride_q,
    split_stride_k,
    split_stride_v,
    SPLIT_Q: tl.constexpr,
    SPLIT_K: tl.constexpr,
    SPLIT_V: tl.constexpr,
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
    q = _rms_rope(
        q_ptr + t * stride_q, split_stride_q, q_out_ptr, qw_ptr, cos_row, sin_row, eps,
        SPLIT_Q, HQ, HQ_PAD, D, R,
    )  # fmt: skip
    hq = tl.arange(0, HQ_PAD)
    q_ok = (hq < HQ)[:, None] & (d < D)[None, :]
    tl.store(
        q_out_ptr + t * (HQ * D) + hq[:, None] * D + d[None, :],
        q.to(q_out_ptr.dtype.element_ty),
        mask=q_ok,
    )
    k = _rms_rope(
        k_ptr + t * stride_k, split_stride_k, q_out_ptr, kw_ptr, cos_row, sin_row, eps,
        SPLIT_K, HKV, HKV_PAD, D, R,
    )  # fmt: skip
    hk = tl.arange(0, HKV_PAD)
    k_ok = (hk < HKV)[:, None] & (d < D)[None, :]
    slot = tl.load(slot_ptr + t)
    at = slot * (HKV * D) + hk[:, None] * D + d[None, :]
    tl.store(k_cache_ptr + at, k.to(k_cache_ptr.dtype.element_ty), mask=k_ok)
    v = _summed(
        v_ptr + t * stride_v, hk[:, None] * D + d[None, :], k_ok, split_stride_v, 0, SPLIT_V, 1,
        q_out_ptr,
    )  # fmt: skip
    tl.store(v_cache_ptr + at, v.to(v_cache_ptr.dtype.element_ty), mask=k_ok)


def qk_norm_rope_store(
    q: torch.Tensor | PartialSums,
    k: torch.Tensor | PartialSums,
    v: torch.Tensor | PartialSums,
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
    """q [T, Hq*D], k, v [T, Hkv*D] (rows may be strided views, or fp32 pieces of a split-K
    projection to sum first, `PartialSums`): q and k RMS-normed over their full width, their
    heads' first R dims rotated; k and v written to the caches [N_blocks, page, Hkv, D] at
    `slot_mapping`. Returns the new q as [T, Hq, D] in the weights' dtype."""
    num_tokens, q_width = q.shape
    num_heads, num_kv_heads = q_width // head_dim, k.shape[1] // head_dim
    q_out = torch.empty((num_tokens, q_width), dtype=q_weight.dtype, device=q_weight.device)
    if num_tokens:
        qp, k_sp, v_sp = _pieces(q), _pieces(k), _pieces(v)
        _qk_norm_rope_store_kernel[(num_tokens,)](
            qp[0], k_sp[0], v_sp[0], q_out, q_weight, k_weight, cos.contiguous(),
            sin.contiguous(), k_cache, v_cache, slot_mapping, eps,
            qp[2], k_sp[2], v_sp[2], qp[1], k_sp[1], v_sp[1],
            SPLIT_Q=qp[4], SPLIT_K=k_sp[4], SPLIT_V=v_sp[4],
            HQ=num_heads, HQ_PAD=triton.next_power_of_2(num_heads),
            HKV=num_kv_heads, HKV_PAD=triton.next_power_of_2(num_kv_heads),
            D=head_dim, R=cos.shape[-1], num_warps=8,
        )  # fmt: skip
    return q_out.view(num_tokens, num_heads, head_dim)


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
