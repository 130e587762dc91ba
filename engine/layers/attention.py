"""M2 attention: full-width QK-norm before the head split, partial RoPE, GQA, causal."""

from __future__ import annotations

import torch
from torch import nn

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.kernels import dispatch
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
        batch: ForwardBatch,
    ) -> torch.Tensor:
        """x [T, C] for the batch's tokens, with their RoPE (cos, sin). The paged caches
        [N_blocks, block_size, Hkv, D] receive these tokens' keys and values at
        `batch.slot_mapping`, then each sequence attends over all of its cached tokens."""
        num_tokens = x.shape[0]
        q = self.q_norm(self.q_proj(x)).view(num_tokens, self.num_heads, self.head_dim)
        k = self.k_norm(self.k_proj(x)).view(num_tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = PartialRotary.rotate(q, k, *rope)
        k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, batch.slot_mapping, k)
        v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, batch.slot_mapping, v)
        out = dispatch.paged_attention(q, k_cache, v_cache, batch, self.scale)
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.head_dim))
