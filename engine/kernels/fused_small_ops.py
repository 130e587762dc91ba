"""The decode step's small ops, fused in Triton so a batch-1 step is a few launches per layer
instead of dozens: residual add + RMSNorm; M2's full-width QK-norm + partial RoPE + KV-cache
write; the router's sigmoid + biased top-k + renormalised weights.

Each rounds where the reference rounds (sums kept in fp32, every stored value in the model's
dtype), so on fp32 models they agree to the last bits and on bf16 models within a rounding
step. The readable versions are `reference.add_rms_norm`, `reference.qk_norm_rope_store` and
`reference.route`. The add + RMSNorm and the QK-norm kernels also take their input as
fp32 pieces of a split-K product (`PartialSums`) and sum them, in a fixed order, as they read:
the producer needs no reduction launch of its own.

A decode batch (a few rows) would leave one program per row on one SM, so there each op is cut
over several programs: the router's logits over expert blocks, the add + RMSNorm over column
slices, the QK-norm over k/v heads. Where a last step needs every program's result (the top-k,
the row's sum of squares), the last program to arrive does it (`_last_to_arrive`: a counter the
caller keeps, left at zero), adding the others' results in a fixed order: deterministic, and no
program ever waits for another. Every kernel here follows `pdl`'s contract.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels import pdl
from m2agent.engine.kernels.partial_sums import PartialSums, PendingNorm
from m2agent.engine.kernels.pdl import wait_for_inputs


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
def _residual(
    x_ptr, delta_ptr, row, c, ok, stride_d_split, stride_d_tok, stride_d_group,
    C: tl.constexpr, HAS_DELTA: tl.constexpr, SPLIT: tl.constexpr, GROUP: tl.constexpr,
):  # fmt: skip
    """Columns `c` of residual row `row`, with the delta (summed from its pieces) added and
    stored back in place when HAS_DELTA."""
    x = tl.load(x_ptr + row * C + c, mask=ok, other=0.0)
    if HAS_DELTA:
        delta = _summed(
            delta_ptr, row * stride_d_tok + c, ok, stride_d_split, stride_d_group, SPLIT, GROUP,
            x_ptr,
        )  # fmt: skip
        x = (x.to(tl.float32) + delta).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + row * C + c, x, mask=ok)
    return x


@triton.jit
def _fence(ON_GPU: tl.constexpr):
    """Every thread's writes before it are visible GPU-wide to anyone ordered after it."""
    if ON_GPU:
        tl.inline_asm_elementwise(
            "fence.acq_rel.gpu; // $0", "=r", [], dtype=tl.int32, is_pure=False, pack=1
        )


@triton.jit
def _last_to_arrive(arrivals_ptr, expected, ON_GPU: tl.constexpr):
    """Whether this program is the last of `expected` to call this on the counter (which the
    last one resets to zero). Every write this program made before is visible to the last
    one, and the last one sees every other program's (from L2: load those with `.cg`)."""
    _fence(ON_GPU)
    tl.debug_barrier()  # all of this program's threads have written
    arrived = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="gpu")
    last = arrived == expected - 1
    if last:
        tl.atomic_xchg(arrivals_ptr, 0, sem="relaxed", scope="gpu")
        _fence(ON_GPU)
    return last


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
    USE_PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK)
    ok = c < C
    w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)  # written by no kernel: before
    wait_for_inputs(USE_PDL)
    x = _residual(
        x_ptr, delta_ptr, row, c, ok, stride_d_split, stride_d_tok, stride_d_group,
        C, HAS_DELTA, SPLIT, GROUP,
    )  # fmt: skip
    x32 = x.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x32 * x32, 0) / C + eps)
    normed = (x32 * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * C + c, (w * normed).to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _add_rms_norm_sliced_kernel(
    x_ptr,  # [T, C] residual stream, updated in place to x + delta (when HAS_DELTA)
    delta_ptr,  # [T, C], or fp32 pieces [SPLIT, T, GROUP, C] to sum first
    w_ptr,  # [C]
    out_ptr,  # [T, C] normed
    squares_ptr,  # scratch [T, SLICES] fp32: each slice's sum of squares
    arrivals_ptr,  # [>= T] int32, zero between launches
    eps,
    stride_d_split,
    stride_d_tok,
    stride_d_group,
    C: tl.constexpr,
    BLOCK: tl.constexpr,
    SLICE: tl.constexpr,
    SLICES: tl.constexpr,
    SLICES_PAD: tl.constexpr,
    HAS_DELTA: tl.constexpr,
    SPLIT: tl.constexpr,
    GROUP: tl.constexpr,
    ON_GPU: tl.constexpr,
    FINISH: tl.constexpr,  # False: the consumers normalise as they read (`PendingNorm`)
    USE_PDL: tl.constexpr,
):
    """Program (row, j) sums the pieces of columns [j*SLICE, (j+1)*SLICE) only, writes that
    slice of x + delta and its sum of squares; the row's last program to arrive adds the
    SLICES sums in a fixed order (deterministic) and writes the whole normed row."""
    row = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    full = tl.arange(0, BLOCK)
    full_ok = full < C
    w = tl.load(w_ptr + full, mask=full_ok, other=0.0).to(tl.float32)  # written by no kernel
    wait_for_inputs(USE_PDL)
    c = part * SLICE + tl.arange(0, SLICE)
    ok = c < C
    x = _residual(
        x_ptr, delta_ptr, row, c, ok, stride_d_split, stride_d_tok, stride_d_group,
        C, HAS_DELTA, SPLIT, GROUP,
    )  # fmt: skip
    x32 = x.to(tl.float32)
    tl.store(squares_ptr + row * SLICES + part, tl.sum(x32 * x32, 0))
    if FINISH and _last_to_arrive(arrivals_ptr + row, SLICES, ON_GPU):
        j = tl.arange(0, SLICES_PAD)
        squares = tl.load(
            squares_ptr + row * SLICES + j, mask=j < SLICES, other=0.0, cache_modifier=".cg"
        )
        rstd = tl.rsqrt(tl.sum(squares, 0) / C + eps)
        xr = tl.load(x_ptr + row * C + full, mask=full_ok, other=0.0, cache_modifier=".cg")
        normed = (xr.to(tl.float32) * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + row * C + full, (w * normed).to(out_ptr.dtype.element_ty), mask=full_ok)


# Batch-1 add + RMSNorm over several programs (each sums its own columns' pieces), up to this
# many rows; more rows fill the GPU with one program per row.
NORM_SLICE = 256
NORM_SLICED_MAX_ROWS = 8
# A deferred one-row norm is left to its consumers (`PendingNorm`); False: it finishes here
# (A/B timing).
PENDING_NORMS = True


def _pieces(value: torch.Tensor | PartialSums) -> tuple[torch.Tensor, int, int, int, int, int]:
    """(tensor, split stride, token stride, group stride, SPLIT, GROUP) for `_summed`."""
    if isinstance(value, PartialSums):
        p = value.parts
        return p, p.stride(0), p.stride(1), p.stride(2), p.shape[0], p.shape[2]
    if value.stride(-1) != 1:
        value = value.contiguous()
    return value, 0, value.stride(0), 0, 1, 1


def add_rms_norm(
    x: torch.Tensor,
    delta: torch.Tensor | PartialSums | None,
    weight: torch.Tensor,
    eps: float,
    arrivals: torch.Tensor | None = None,
    defer: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | PendingNorm]:
    """(x + delta, rms_norm(x + delta)); x [T, C] contiguous is updated in place. `delta` may
    be left as pieces (`PartialSums`): they are summed here, then rounded to x's dtype.
    With `arrivals` (int32 zeros, at least T: the norm's own counters, zero again after each
    launch) up to NORM_SLICED_MAX_ROWS rows are cut into column slices over several
    programs; else one program per row. With `defer`, one row cut into slices is left as a
    `PendingNorm` (no last program: the consumer finishes it as it reads)."""
    num_rows, width = x.shape
    if num_rows == 0:
        return x, torch.empty_like(x)
    block = triton.next_power_of_2(width)
    d, stride_split, stride_tok, stride_group, split, group = _pieces(
        delta if delta is not None else x
    )
    slices = triton.cdiv(width, NORM_SLICE)
    if (
        arrivals is not None
        and num_rows <= min(NORM_SLICED_MAX_ROWS, arrivals.numel())
        and slices > 1
    ):
        if arrivals.dtype != torch.int32:
            raise ValueError("norm arrivals must be int32")
        finish = not (defer and num_rows == 1 and PENDING_NORMS)
        squares = torch.empty((num_rows, slices), dtype=torch.float32, device=x.device)
        out = torch.empty_like(x) if finish else squares  # (unused without the last step)
        _add_rms_norm_sliced_kernel[(num_rows, slices)](
            x, d, weight, out, squares, arrivals, eps, stride_split, stride_tok, stride_group,
            C=width, BLOCK=block, SLICE=NORM_SLICE, SLICES=slices,
            SLICES_PAD=triton.next_power_of_2(slices), HAS_DELTA=delta is not None,
            SPLIT=split, GROUP=group, ON_GPU=x.is_cuda, FINISH=finish, num_warps=4,
            **pdl.launch_args(x.device),
        )  # fmt: skip
        return x, (out if finish else PendingNorm(x, squares, weight, eps))
    out = torch.empty_like(x)
    _add_rms_norm_kernel[(num_rows,)](
        x, d, weight, out, eps, stride_split, stride_tok, stride_group,
        C=width, BLOCK=block, HAS_DELTA=delta is not None, SPLIT=split, GROUP=group,
        num_warps=8 if block >= 2048 else 4, **pdl.launch_args(x.device),
    )  # fmt: skip
    return x, out


# Up to this many tokens the QK-norm kernel runs a program per (token, k/v head); more tokens
# fill the GPU with one program per token.
QK_NORM_PARTS_MAX_TOKENS = 8
QK_NORM_WARPS = 8  # 4: 0.9 us per layer slower at batch 1 (H200, docs/bench/i12/round6)


@triton.jit
def _rms_rope(
    x_ptr,  # one token's [H * D] row, or the first of SPLIT fp32 pieces of it
    stride_split,
    like_ptr,  # rounds to this pointer's element type where the reference rounds
    w_ptr,  # [H * D]
    cos_ptr,  # this token's [R]
    sin_ptr,
    eps,
    mine,  # [H_PAD] the heads this program finishes (the others only count in the norm)
    SPLIT: tl.constexpr,
    H: tl.constexpr,
    H_PAD: tl.constexpr,
    D: tl.constexpr,
    R: tl.constexpr,
):
    """The row normalised over all H*D values, times w, then each head's first R dims
    rotated (NeoX halves); returned [H_PAD, D] in fp32 holding the rounded values (only the
    `mine` heads' are meaningful: the others' weights and partners are not read)."""
    h = tl.arange(0, H_PAD)
    d = tl.arange(0, D)
    ok = (h < H)[:, None] & (d < D)[None, :]
    idx = h[:, None] * D + d[None, :]
    dtype = like_ptr.dtype.element_ty
    x32 = _summed(x_ptr, idx, ok, stride_split, 0, SPLIT, 1, like_ptr)
    rstd = tl.rsqrt(tl.sum(tl.sum(x32 * x32, 1), 0) / (H * D) + eps)
    ok = ok & mine[:, None]
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
    PARTS: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program (t, j) finishes the j-th of PARTS equal shares of the q heads and of the k/v
    heads; each computes the whole row's sums of squares itself (the same code, so the same
    bits in every program): no program waits for another."""
    t = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    slot = tl.load(slot_ptr + t)  # from the host: before the wait
    wait_for_inputs(USE_PDL)  # q, k, v, cos and sin come from this step
    cos_row = cos_ptr + t * R
    sin_row = sin_ptr + t * R
    d = tl.arange(0, D)
    hq = tl.arange(0, HQ_PAD)
    q_mine = (hq >= part * (HQ // PARTS)) & (hq < (part + 1) * (HQ // PARTS))
    q = _rms_rope(
        q_ptr + t * stride_q, split_stride_q, q_out_ptr, qw_ptr, cos_row, sin_row, eps, q_mine,
        SPLIT_Q, HQ, HQ_PAD, D, R,
    )  # fmt: skip
    hk = tl.arange(0, HKV_PAD)
    k_mine = (hk >= part * (HKV // PARTS)) & (hk < (part + 1) * (HKV // PARTS))
    k = _rms_rope(
        k_ptr + t * stride_k, split_stride_k, q_out_ptr, kw_ptr, cos_row, sin_row, eps, k_mine,
        SPLIT_K, HKV, HKV_PAD, D, R,
    )  # fmt: skip
    k_ok = (k_mine & (hk < HKV))[:, None] & (d < D)[None, :]
    v = _summed(
        v_ptr + t * stride_v, hk[:, None] * D + d[None, :], k_ok, split_stride_v, 0, SPLIT_V, 1,
        q_out_ptr,
    )  # fmt: skip
    # Every load above, then every store: a store before a load would hold that load back
    # (the compiler cannot tell the pointers apart), one more L2 round trip each.
    q_ok = (q_mine & (hq < HQ))[:, None] & (d < D)[None, :]
    tl.store(
        q_out_ptr + t * (HQ * D) + hq[:, None] * D + d[None, :],
        q.to(q_out_ptr.dtype.element_ty),
        mask=q_ok,
    )
    at = slot * (HKV * D) + hk[:, None] * D + d[None, :]
    tl.store(k_cache_ptr + at, k.to(k_cache_ptr.dtype.element_ty), mask=k_ok)
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
        parts = 1
        if num_tokens <= QK_NORM_PARTS_MAX_TOKENS and num_heads % num_kv_heads == 0:
            parts = num_kv_heads  # a share: one k/v head and its group of q heads
        _qk_norm_rope_store_kernel[(num_tokens, parts)](
            qp[0], k_sp[0], v_sp[0], q_out, q_weight, k_weight, cos.contiguous(),
            sin.contiguous(), k_cache, v_cache, slot_mapping, eps,
            qp[2], k_sp[2], v_sp[2], qp[1], k_sp[1], v_sp[1],
            SPLIT_Q=qp[4], SPLIT_K=k_sp[4], SPLIT_V=v_sp[4],
            HQ=num_heads, HQ_PAD=triton.next_power_of_2(num_heads),
            HKV=num_kv_heads, HKV_PAD=triton.next_power_of_2(num_kv_heads),
            D=head_dim, R=cos.shape[-1], PARTS=parts, num_warps=QK_NORM_WARPS,
            **pdl.launch_args(k_cache.device),
        )  # fmt: skip
    return q_out.view(num_tokens, num_heads, head_dim)


# The one-launch router serves up to this many tokens (decode batches); past it the logits are
# a cuBLAS GEMM (the weight re-read per token block would cost more than the launch saves).
ROUTER_MAX_TOKENS = 16
ROUTER_BLOCK_T = 4  # tokens per program (fewer when the batch is smaller)
ROUTER_BLOCK_E = 2  # experts per program: 128 programs stream M2's 3 MB weight at batch 1
ROUTER_WHOLE_ROW_MAX = 8192  # weight elements a program holds whole (64 fp32 registers a thread)
# The top-k as one bitonic top-k (`tl.topk`): 1.3 us a layer faster at batch 1 than TOP_K
# rounds of a max over the row (False, kept for A/B timing; H200, docs/bench/i12/round8).
ROUTER_SORT = True


@triton.jit
def _biased(logits_ptr, bias_ptr, t, t_ok, e, E: tl.constexpr):
    """Sigmoid scores and score + bias of tokens `t` for experts `e` ([len(t), len(e)];
    -inf where e >= E). The logits come from L2: other programs may have just stored them."""
    ok = e < E
    logits = tl.load(
        logits_ptr + t[:, None] * E + e[None, :],
        mask=t_ok[:, None] & ok[None, :],
        other=0.0,
        cache_modifier=".cg",
    )
    scores = tl.sigmoid(logits)
    bias = tl.load(bias_ptr + e, mask=ok, other=0.0)
    return scores, tl.where(ok[None, :], scores + bias[None, :], float("-inf"))


@triton.jit
def _top_k(
    logits_ptr,  # [T, E] fp32
    bias_ptr,
    weights_ptr,  # out [T, K] fp32
    ids_ptr,  # out [T, K] int64
    t,  # [BLOCK_T] token of each row
    t_ok,
    E: tl.constexpr,
    E_PAD: tl.constexpr,
    TOP_K: tl.constexpr,
    K_PAD: tl.constexpr,
    SORT: tl.constexpr,
):
    """The TOP_K experts by score + bias (a tie goes to the lower id), with their unbiased
    scores renormalised. The picks are the largest of packed keys: the biased score's bits made
    order-preserving as a signed int in the high half, E_PAD - 1 - id in the low half (so the
    larger key is the higher score, then the lower id; no two keys are equal). With SORT, one
    bitonic top-K_PAD over the keys (`tl.topk`: a few exchange rounds); else TOP_K rounds of a
    max over the whole row. The picked experts' scores are then taken from the row and summed
    at once."""
    e = tl.arange(0, E_PAD)
    kk = tl.arange(0, K_PAD)
    all_scores, biased = _biased(logits_ptr, bias_ptr, t, t_ok, e, E)
    bits = biased.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order == signed int order
    keys = (ordered.to(tl.int64) << 32) | (E_PAD - 1 - e)[None, :].to(tl.int64)
    if SORT and K_PAD > 1:  # (Triton's top-k of one element does not build)
        best = tl.topk(keys, K_PAD, dim=1)  # [rows, K_PAD], largest first
        picked_ids = E_PAD - 1 - (best - ((best >> 32) << 32))
    else:
        picked_ids = tl.zeros((biased.shape[0], K_PAD), dtype=tl.int64)
        for k in tl.static_range(TOP_K):
            best = tl.max(keys, 1)
            best_id = E_PAD - 1 - (best - ((best >> 32) << 32))
            picked_ids = tl.where((kk == k)[None, :], best_id[:, None], picked_ids)
            keys = tl.where(keys == best[:, None], -(2**63), keys)  # below every real key
    mask = t_ok[:, None] & (kk < TOP_K)[None, :]
    # The picked experts' scores, taken from the row in registers (one sum over a one-hot per
    # pick, all picks at once: exact) rather than gathered back from L2.
    one_hot = picked_ids[:, :, None] == e[None, None, :]
    scores = tl.sum(tl.where(one_hot, all_scores[:, None, :], 0.0), 2)
    scores = tl.where(mask, scores, 0.0)
    total = tl.sum(scores, 1)
    at = t[:, None] * TOP_K + kk[None, :]
    tl.store(weights_ptr + at, scores / total[:, None], mask=mask)
    tl.store(ids_ptr + at, picked_ids, mask=mask)


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
    SORT: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_for_inputs(USE_PDL)
    t = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)
    _top_k(logits_ptr, bias_ptr, weights_ptr, ids_ptr, t, t >= 0, E, E_PAD, TOP_K, K_PAD, SORT)


@triton.jit
def _logit_chunk(x_ptr, stride_x, t, t_ok, w, c0, C: tl.constexpr, BLOCK_C: tl.constexpr):
    """x[t, c0:c0+BLOCK_C] (fp32) times the weight rows' chunk w [BLOCK_E, BLOCK_C]:
    [BLOCK_T, BLOCK_E] partial logits."""
    c = c0 + tl.arange(0, BLOCK_C)
    x = tl.load(
        x_ptr + t[:, None] * stride_x + c[None, :], mask=t_ok[:, None] & (c < C)[None, :], other=0.0
    ).to(tl.float32)
    return tl.sum(x[:, None, :] * w[None, :, :], 2)


@triton.jit
def _router_kernel(
    x_ptr,  # [T, C] (rows strided by stride_x)
    gate_ptr,  # [E, C] fp32
    bias_ptr,  # [E] fp32
    logits_ptr,  # scratch [T, E] fp32
    arrivals_ptr,  # [>= token blocks] int32, zero between launches
    weights_ptr,  # out [T, K] fp32
    ids_ptr,  # out [T, K] int64
    T,
    stride_x,
    C: tl.constexpr,
    E: tl.constexpr,
    E_PAD: tl.constexpr,
    TOP_K: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ON_GPU: tl.constexpr,
    sq_ptr,  # with NORM: [SLICES] fp32 sums of squares of x's column slices
    nw_ptr,  # with NORM: [C] the norm's weight
    h_ptr,  # with NORM: out [1, C] the normed row (each program writes H_COLS of it)
    eps,
    NORM: tl.constexpr,  # one token, x a `PendingNorm`'s row: normalise it as it loads
    SLICES: tl.constexpr,
    SLICES_PAD: tl.constexpr,
    H_COLS: tl.constexpr,
    SORT: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Program (i, j): the fp32 logits of token block i for expert block j (each logit by
    exactly one program, summed in a fixed order: deterministic). The last program of token
    block i to arrive (an atomic counter, which it resets) does the block's top-k. With NORM
    (one token, the whole row per program) x is normalised as it loads, rounded where the add
    + RMSNorm kernel rounds, and the programs write the normed row for the experts."""
    pid_t = tl.program_id(0)
    t = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = t < T
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    e_ok = e < E
    c = tl.arange(0, BLOCK_C)
    w_rows = gate_ptr + e[:, None].to(tl.int64) * C
    # The router weight is written by no kernel of the step: its first chunk (all of it when
    # BLOCK_C >= C) loads before the wait, under PDL while the kernel before still runs.
    w = tl.load(w_rows + c[None, :], mask=e_ok[:, None] & (c < C)[None, :], other=0.0)
    if NORM:
        nw = tl.load(nw_ptr + c, mask=c < C, other=0.0).to(tl.float32)
    wait_for_inputs(USE_PDL)
    if BLOCK_C >= C:  # one token row at a time against the whole weight slice
        for j in tl.static_range(BLOCK_T):
            token = pid_t.to(tl.int64) * BLOCK_T + j
            x = tl.load(x_ptr + token * stride_x + c, mask=(c < C) & (token < T), other=0.0)
            if NORM:
                s = tl.arange(0, SLICES_PAD)
                squares = tl.load(sq_ptr + s, mask=s < SLICES, other=0.0)
                rstd = tl.rsqrt(tl.sum(squares, 0) / C + eps)
                like = x_ptr.dtype.element_ty
                x = (nw * (x.to(tl.float32) * rstd).to(like).to(tl.float32)).to(like)
                lo = tl.program_id(1) * H_COLS
                tl.store(h_ptr + c, x, mask=(c >= lo) & (c < lo + H_COLS) & (c < C))
            logit = tl.sum(w * x.to(tl.float32)[None, :], 1)
            tl.store(logits_ptr + token * E + e, logit, mask=e_ok & (token < T))
    else:
        acc = _logit_chunk(x_ptr, stride_x, t, t_ok, w, 0, C, BLOCK_C)
        for c0 in range(BLOCK_C, C, BLOCK_C):
            cc = c0 + c
            w = tl.load(w_rows + cc[None, :], mask=e_ok[:, None] & (cc < C)[None, :], other=0.0)
            acc += _logit_chunk(x_ptr, stride_x, t, t_ok, w, c0, C, BLOCK_C)
        tl.store(logits_ptr + t[:, None] * E + e[None, :], acc, mask=t_ok[:, None] & e_ok[None, :])
    if _last_to_arrive(arrivals_ptr + pid_t, tl.num_programs(1), ON_GPU):
        for i in range(BLOCK_T):  # a row at a time: the top-k's registers stay in bounds
            row = pid_t.to(tl.int64) * BLOCK_T + i + tl.arange(0, 1)
            _top_k(
                logits_ptr, bias_ptr, weights_ptr, ids_ptr, row, row < T, E, E_PAD, TOP_K, K_PAD,
                SORT,
            )  # fmt: skip


def _sort(x: torch.Tensor) -> bool:
    """The top-k's way: bitonic on CUDA (Triton's interpreter cannot run `tl.topk`)."""
    return ROUTER_SORT and x.is_cuda


def _router_block_c(hidden: int, block_t: int) -> int:
    """The router's reduction chunk: the whole row when a program's weight slice fits in
    registers whole (then it all loads before the PDL wait), else chunks sized to the token
    block."""
    whole = triton.next_power_of_2(hidden)
    if ROUTER_BLOCK_E * whole <= ROUTER_WHOLE_ROW_MAX:
        return whole
    return max(64, min(whole, 1024 // block_t))


def new_router_arrivals(device: torch.device | str | None = None) -> torch.Tensor:
    """The arrival counters one router call needs (all zero; each launch leaves them zero).
    One set per router, reused by every call: launches on one stream never overlap."""
    return torch.zeros(ROUTER_MAX_TOKENS, dtype=torch.int32, device=device)


def route(
    x: torch.Tensor,
    gate_weight: torch.Tensor,
    correction_bias: torch.Tensor,
    top_k: int,
    arrivals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M2's router: fp32 logits, sigmoid, biased top-k, renormalised unbiased weights.
    Returns weights [T, K] fp32, ids [T, K] int64. Up to ROUTER_MAX_TOKENS tokens in one
    launch (the logits over many programs, the top-k by the last to finish); `arrivals`
    (`new_router_arrivals`, kept by the caller so a captured graph holds no allocation of its
    own) is allocated per call when not given. More tokens: cuBLAS logits, then the top-k."""
    weights, ids, _ = _route(x, gate_weight, correction_bias, top_k, arrivals, None)
    return weights, ids


def routes_pending_norm(hidden: int) -> bool:
    """Whether `route_normed` finishes a one-row `PendingNorm` of this width in its launch
    (each program holds the whole row)."""
    return _router_block_c(hidden, 1) >= hidden


def route_normed(
    norm: PendingNorm,
    gate_weight: torch.Tensor,
    correction_bias: torch.Tensor,
    top_k: int,
    arrivals: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`route` of a one-row `PendingNorm` (see `routes_pending_norm`): the router normalises
    the row as it loads it and also writes it. Returns (weights, ids, the normed row)."""
    if norm.x.shape[0] != 1 or not routes_pending_norm(norm.x.shape[1]):
        raise ValueError("route_normed takes one row whose width the router holds whole")
    return _route(norm.x, gate_weight, correction_bias, top_k, arrivals, norm)


def _route(
    x: torch.Tensor,
    gate_weight: torch.Tensor,
    correction_bias: torch.Tensor,
    top_k: int,
    arrivals: torch.Tensor | None,
    norm: PendingNorm | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    num_tokens, hidden = x.shape
    num_experts = gate_weight.shape[0]
    weights = torch.empty((num_tokens, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((num_tokens, top_k), dtype=torch.int64, device=x.device)
    if num_tokens == 0:
        return weights, ids, x
    gate, bias = gate_weight.float().contiguous(), correction_bias.float().contiguous()
    e_pad = triton.next_power_of_2(num_experts)
    sizes = dict(E=num_experts, E_PAD=e_pad, TOP_K=top_k)
    if num_tokens > ROUTER_MAX_TOKENS:
        logits = torch.nn.functional.linear(x.float(), gate)
        _route_kernel[(num_tokens,)](
            logits, bias, weights, ids, K_PAD=triton.next_power_of_2(top_k), SORT=_sort(x),
            num_warps=4, **sizes,
            **pdl.launch_args(x.device),
        )  # fmt: skip
        return weights, ids, x
    if x.stride(-1) != 1:
        x = x.contiguous()
    block_t = min(ROUTER_BLOCK_T, triton.next_power_of_2(num_tokens))
    token_blocks = triton.cdiv(num_tokens, block_t)
    if arrivals is None:
        arrivals = new_router_arrivals(x.device)
    if arrivals.numel() < token_blocks or arrivals.dtype != torch.int32:
        raise ValueError(f"router arrivals must be int32 with >= {token_blocks} entries")
    logits = torch.empty((num_tokens, num_experts), dtype=torch.float32, device=x.device)
    expert_blocks = triton.cdiv(num_experts, ROUTER_BLOCK_E)
    if norm is not None:
        h = torch.empty_like(x)
        squares, norm_weight, eps = norm.squares, norm.weight, norm.eps
    else:
        h, squares, norm_weight, eps = x, logits, x, 0.0  # (unread without a norm)
    _router_kernel[(token_blocks, expert_blocks)](
        x, gate, bias, logits, arrivals, weights, ids, num_tokens, x.stride(0),
        C=hidden, BLOCK_T=block_t, BLOCK_E=ROUTER_BLOCK_E, K_PAD=triton.next_power_of_2(top_k),
        BLOCK_C=_router_block_c(hidden, block_t), ON_GPU=x.is_cuda,
        sq_ptr=squares, nw_ptr=norm_weight, h_ptr=h, eps=eps, NORM=norm is not None,
        SLICES=squares.shape[-1] if norm is not None else 1,
        SLICES_PAD=triton.next_power_of_2(squares.shape[-1]) if norm is not None else 1,
        H_COLS=triton.cdiv(hidden, expert_blocks) if norm is not None else 1, SORT=_sort(x),
        num_warps=4, **sizes, **pdl.launch_args(x.device),
    )  # fmt: skip
    return weights, ids, h
