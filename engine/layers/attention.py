"""M2 attention: full-width QK-norm before the head split, partial RoPE, GQA, causal."""

from __future__ import annotations

import torch
from torch import nn

from m2agent.engine.kernels.reference import causal_attention
from m2agent.engine.layers.linear import Linear
from m2agent.engine.layers.norm import RMSNorm
from m2agent.engine.layers.rotary import PartialRotary
from m2agent.engine.model_config import ModelConfig


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = (
            c.num_attention_heads,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.q_proj = Linear(c.hidden_size, c.q_size, dtype, c.fp8_for("self_attn.q_proj"))
        self.k_proj = Linear(c.hidden_size, c.kv_size, dtype, c.fp8_for("self_attn.k_proj"))
        self.v_proj = Linear(c.hidden_size, c.kv_size, dtype, c.fp8_for("self_attn.v_proj"))
        self.o_proj = Linear(c.q_size, c.hidden_size, dtype, c.fp8_for("self_attn.o_proj"))
        # One norm over the whole projection (6144 / 1024 wide in M2), not per head.
        self.q_norm = RMSNorm(c.q_size, c.rms_norm_eps, dtype)
        self.k_norm = RMSNorm(c.kv_size, c.rms_norm_eps, dtype)
        self.scale = c.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        start: int,
    ) -> torch.Tensor:
        """x [T, C] for tokens at positions start .. start+T-1, with their RoPE (cos, sin);
        caches [S_max, Hkv, D] hold the keys and values of positions 0 .. start-1 and receive
        these T."""
        num_tokens = x.shape[0]
        q = self.q_norm(self.q_proj(x)).view(num_tokens, self.num_heads, self.head_dim)
        k = self.k_norm(self.k_proj(x)).view(num_tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = PartialRotary.rotate(q, k, *rope)
        end = start + num_tokens
        k_cache[start:end] = k
        v_cache[start:end] = v
        out = causal_attention(q, k_cache[:end], v_cache[:end], start, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))
