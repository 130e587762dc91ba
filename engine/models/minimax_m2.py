"""The MiniMax-M2 decoder: pre-norm blocks of attention and sparse MoE, then the LM head.

Reads as single-device code; tensor parallelism belongs in the layers (each takes `tp`).
Parameter names follow the published checkpoint (`model.layers.N.self_attn.q_proj.weight`,
...), so loading is one table.
"""

from __future__ import annotations

import torch
from torch import nn

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.kernels.partial_sums import PartialSums
from m2agent.engine.layers.attention import Attention
from m2agent.engine.layers.embedding import Embedding, LMHead
from m2agent.engine.layers.moe import SparseMoE
from m2agent.engine.layers.norm import RMSNorm
from m2agent.engine.layers.parallel import SINGLE, TensorParallel
from m2agent.engine.layers.rotary import PartialRotary
from m2agent.engine.model_config import ModelConfig


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype, tp: TensorParallel) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.self_attn = Attention(config, dtype, tp)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        self.block_sparse_moe = SparseMoE(config, dtype, tp)

    def forward(
        self,
        x: torch.Tensor,
        delta: torch.Tensor | PartialSums | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
    ) -> tuple[torch.Tensor, torch.Tensor | PartialSums]:
        """`x + delta` is the residual stream entering this layer (`delta`: the previous
        layer's MoE output, None for the first layer): each residual add is fused with the
        norm that follows it, which also sums a delta left as split-K pieces (`PartialSums`).
        Returns (the stream after attention, this layer's MoE output). Where the consumer
        can (a one-token decode step on CUDA), each norm's last step is left to it
        (`PendingNorm`: the q/k/v GEMV and the router normalise as they load)."""
        defer = self.self_attn.takes_pending_norm(x)
        x, h = self.input_layernorm.add_and_norm(x, delta, defer)
        attn = self.self_attn(h, rope, k_cache, v_cache, batch)
        defer = self.block_sparse_moe.takes_pending_norm(x)
        x, h = self.post_attention_layernorm.add_and_norm(x, attn, defer)
        return x, self.block_sparse_moe(h)


class DecoderStack(nn.Module):
    """`model.*` in the checkpoint: embeddings, layers, final norm."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype, tp: TensorParallel) -> None:
        super().__init__()
        self.embed_tokens = Embedding(config.vocab_size, config.hidden_size, dtype, tp)
        self.layers = nn.ModuleList(
            DecoderLayer(config, dtype, tp) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype)


class MiniMaxM2ForCausalLM(nn.Module):
    def __init__(
        self, config: ModelConfig, dtype: torch.dtype, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        self.config, self.tp = config, tp
        self.rotary = PartialRotary(config.rotary_dim, config.rope_theta)
        self.model = DecoderStack(config, dtype, tp)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, dtype, tp)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, batch: ForwardBatch, k_caches: torch.Tensor, v_caches: torch.Tensor
    ) -> torch.Tensor:
        """Hidden states [T, C] after the final norm for the batch's tokens.
        k_caches, v_caches: the paged cache of every layer, [L, N_blocks, block_size, Hkv, D]
        (Hkv: this rank's key/value heads)."""
        x = self.model.embed_tokens(batch.token_ids)
        rope = self.rotary.cos_sin(batch.positions, x.dtype)
        delta: torch.Tensor | PartialSums | None = None
        for i, layer in enumerate(self.model.layers):
            x, delta = layer(x, delta, rope, k_caches[i], v_caches[i], batch)
        return self.model.norm.add_and_norm(x, delta)[1]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
