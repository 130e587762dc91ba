"""Plain-PyTorch versions of every kernel: the CPU path and the oracle GPU kernels are tested
against. Shapes use the project alphabet: T tokens, H heads, D head dim, E experts, K top-k,
I expert intermediate, C hidden (model width)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite float8_e4m3fn
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True, slots=True)
class ExpertWeights:
    """One layer's stacked experts as stored: w13 [E, 2I, C], w2 [E, C, I] (FP8 or float) and,
    for FP8, their block scales (`block` = (rows, cols) of one scale's block)."""

    w13: torch.Tensor
    w2: torch.Tensor
    w13_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    block: tuple[int, int] = (128, 128)

    @property
    def is_fp8(self) -> bool:
        return self.w13_scale is not None

    def dense(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(w13, w2) in `dtype`, dequantized when FP8: a full copy (the reference path)."""
        if self.w13_scale is None or self.w2_scale is None:
            return self.w13.to(dtype), self.w2.to(dtype)
        return (
            dequantize_fp8_block(self.w13, self.w13_scale, self.block, dtype),
            dequantize_fp8_block(self.w2, self.w2_scale, self.block, dtype),
        )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`weight * x * rsqrt(mean(x^2) + eps)`, statistics in fp32, result in x's dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream after adding `delta` (None: nothing to add), and its RMSNorm."""
    if delta is not None:
        x = x + delta
    return x, rms_norm(x, weight, eps)


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
    """M2's attention prologue: q [T, Hq*D] and k [T, Hkv*D] RMS-normed over their whole width,
    the first rotary dims of each head rotated; k and v [T, Hkv*D] stored in the paged caches
    at `slot_mapping`. Returns q [T, Hq, D]."""
    num_tokens, num_kv_heads = q.shape[0], k.shape[1] // head_dim
    q = rms_norm(q, q_weight, eps).view(num_tokens, q.shape[1] // head_dim, head_dim)
    k = rms_norm(k, k_weight, eps).view(num_tokens, num_kv_heads, head_dim)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(
        0, slot_mapping, v.reshape(num_tokens, num_kv_heads, head_dim)
    )
    return q


def rope_cos_sin(
    positions: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, rotary_dim] (NeoX layout: the frequency table written twice)."""
    exponents = torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (exponents / rotary_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `rotary_dim` dims of each head of x [T, H, D]; the rest pass through.
    NeoX style: dim i pairs with dim i + rotary_dim/2."""
    rotary_dim = cos.shape[-1]
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat((rot * cos + rotated * sin, rest), dim=-1)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float
) -> torch.Tensor:
    """Attention of T new queries q [T, H, D] over S = start + T keys k, v [S, Hkv, D]
    (the first `start` from the cache); query t sees keys 0 .. start + t. GQA by grouping."""
    num_tokens, num_keys = q.shape[0], k.shape[0]
    qh, kh, vh = q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None]
    # Bottom-right-aligned causal mask, never materialised: fused kernels handle it, and no
    # backend has to build a per-shape plan for a dense mask.
    mask = causal_lower_right(num_tokens, num_keys) if num_tokens > 1 else None
    with sdpa_kernel(_SDPA_BACKENDS):
        out = F.scaled_dot_product_attention(
            qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True
        )
    return out[0].transpose(0, 1)


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_lens: list[int],
    seq_lens: list[int],
    block_tables: list[list[int]],
    scale: float,
) -> torch.Tensor:
    """Attention of each sequence's new queries over its paged keys and values.
    q [T, H, D] (sequences one after another); caches [N_blocks, block_size, Hkv, D];
    sequence i has query_lens[i] new tokens, the last ones of its seq_lens[i]."""
    out = torch.empty_like(q)
    start = 0
    for num_new, num_keys, table in zip(query_lens, seq_lens, block_tables, strict=True):
        blocks = torch.tensor(table, dtype=torch.long, device=q.device)
        keys = k_cache[blocks].flatten(0, 1)[:num_keys]
        values = v_cache[blocks].flatten(0, 1)[:num_keys]
        end = start + num_new
        out[start:end] = causal_attention(q[start:end], keys, values, num_keys - num_new, scale)
        start = end
    return out


def route(
    x: torch.Tensor, gate_weight: torch.Tensor, correction_bias: torch.Tensor, top_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """M2's router: fp32 sigmoid scores; experts picked by score + bias; combine weights are the
    unbiased scores of the picked experts, renormalised. Returns weights [T, K] fp32, ids [T, K]."""
    scores = torch.sigmoid(F.linear(x.float(), gate_weight.float()))
    _, expert_ids = torch.topk(scores + correction_bias.float(), top_k, dim=-1, sorted=False)
    weights = scores.gather(1, expert_ids)
    return weights / weights.sum(dim=-1, keepdim=True), expert_ids


def moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """sum_k weights[t,k] * w2(silu(w1 x) * w3 x) over each token's experts.
    x [T, C]; w13 [E, 2I, C] (w1 rows, then w3 rows); w2 [E, C, I]. One expert at a time:
    readable, not fast (and it reads the chosen experts back to the host)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in torch.unique(expert_ids).tolist():
        token_idx, slot = torch.where(expert_ids == expert)
        out.index_add_(
            0,
            token_idx,
            _swiglu_expert(x[token_idx], w13[expert], w2[expert]) * weights[token_idx, slot, None],
        )
    return out.to(x.dtype)


def moe_experts_dense(
    x: torch.Tensor,
    weights: torch.Tensor,
    expert_ids: torch.Tensor,
    w13: torch.Tensor,
    w2: torch.Tensor,
) -> torch.Tensor:
    """The same sum with every expert applied to every token, weighted by zero when not
    chosen: no data-dependent shapes, so CUDA graphs can capture it. E times the work: for
    small models only (the grouped path serves real ones)."""
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for expert in range(w13.shape[0]):
        gate = (weights * (expert_ids == expert)).sum(dim=-1, keepdim=True)
        out += _swiglu_expert(x, w13[expert], w2[expert]) * gate
    return out.to(x.dtype)


def _swiglu_expert(h: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    gate, up = F.linear(h, w13).chunk(2, dim=-1)
    return F.linear(F.silu(gate) * up, w2).float()


def dequantize_fp8_block(
    weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], dtype: torch.dtype
) -> torch.Tensor:
    """Real weights from FP8 blocks: w[r, c] = fp8[r, c] * scale_inv[r // bn, c // bk].
    Works on [..., R, Cin] with scale_inv [..., ceil(R/bn), ceil(Cin/bk)]."""
    rows, cols = weight.shape[-2:]
    scale = scale_inv.float().repeat_interleave(block[0], dim=-2)[..., :rows, :]
    scale = scale.repeat_interleave(block[1], dim=-1)[..., :cols]
    return (weight.float() * scale).to(dtype)


def quantize_fp8_block(
    weight: torch.Tensor, block: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse: per-block scale_inv = amax / 448 so each block spans FP8's range.
    Returns (fp8 weight, fp32 scale_inv) for weight [..., R, Cin]."""
    rows, cols = weight.shape[-2:]
    bn, bk = block
    pad_r, pad_c = -rows % bn, -cols % bk
    padded = F.pad(weight.float(), (0, pad_c, 0, pad_r))
    lead = padded.shape[:-2]
    blocks = padded.reshape(*lead, (rows + pad_r) // bn, bn, (cols + pad_c) // bk, bk)
    amax = blocks.abs().amax(dim=(-3, -1)).clamp(min=1e-12)
    scale_inv = amax / FP8_MAX
    scaled = blocks / scale_inv[..., :, None, :, None]
    q = scaled.reshape(padded.shape)[..., :rows, :cols].to(FP8_DTYPE)
    return q, scale_inv.float()
