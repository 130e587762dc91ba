"""M2 attention: full-width QK-norm before the head split, partial RoPE, GQA, causal.

Under tensor parallelism each rank holds an even share of the query and key/value heads
(q/k/v split by columns, o_proj by rows then summed over ranks); the QK-norm statistics span
all ranks, so they are summed with one all-reduce for q and k together."""

from __future__ import annotations

import torch
from torch import nn

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.kernels import dispatch
from m2agent.engine.kernels.partial_sums import PartialSums, PendingNorm, materialize
from m2agent.engine.layers.linear import FusedRows, Linear, Split
from m2agent.engine.layers.norm import SplitRMSNorm
from m2agent.engine.layers.parallel import SINGLE, TensorParallel
from m2agent.engine.layers.rotary import PartialRotary
from m2agent.engine.model_config import ModelConfig


class Attention(nn.Module):
    def __init__(
        self, config: ModelConfig, dtype: torch.dtype, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        c, self.tp = config, tp
        self.num_heads = tp.split(c.num_attention_heads, "num_attention_heads")
        self.num_kv_heads = tp.split(c.num_key_value_heads, "num_key_value_heads")
        self.head_dim = c.head_dim

        def linear(name: str, n_in: int, n_out: int, split: Split) -> Linear:
            fp8 = c.fp8_for(f"self_attn.{name}")
            return Linear(n_in, n_out, dtype, fp8, split, tp, f"self_attn.{name}")

        self.q_proj = linear("q_proj", c.hidden_size, c.q_size, "columns")
        self.k_proj = linear("k_proj", c.hidden_size, c.kv_size, "columns")
        self.v_proj = linear("v_proj", c.hidden_size, c.kv_size, "columns")
        self.o_proj = linear("o_proj", c.q_size, c.hidden_size, "rows")
        # q, k and v as row blocks of one weight: one launch for all three.
        self.qkv = FusedRows.fuse([self.q_proj, self.k_proj, self.v_proj])
        # One norm over the whole projection (6144 / 1024 wide in M2), not per head.
        self.q_norm = SplitRMSNorm(c.q_size, c.rms_norm_eps, dtype, tp)
        self.k_norm = SplitRMSNorm(c.kv_size, c.rms_norm_eps, dtype, tp)
        self.scale = c.head_dim**-0.5

    def takes_pending_norm(self, x: torch.Tensor) -> bool:
        """Whether `forward` may get its input as a `PendingNorm` of the residual rows x (the
        fused FP8 q/k/v GEMV finishes it; one rank only)."""
        return self.tp.size == 1 and self.qkv is not None and self.qkv.takes_pending_norm(x)

    def forward(
        self,
        x: torch.Tensor | PendingNorm,
        rope: tuple[torch.Tensor, torch.Tensor],
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        batch: ForwardBatch,
    ) -> torch.Tensor | PartialSums:
        """x [T, C] for the batch's tokens, with their RoPE (cos, sin). The paged caches
        [N_blocks, block_size, Hkv, D] receive these tokens' keys and values at
        `batch.slot_mapping`, then each sequence attends over all of its cached tokens.
        Without tensor parallelism the output may be left as split-K pieces (`PartialSums`)
        for the fused residual add + RMSNorm that follows."""
        num_tokens = x.shape[0]
        q, k, v = self._project_qkv(x)
        if self.tp.size == 1:  # QK-norm, RoPE and the KV write: one kernel on CUDA
            q = dispatch.qk_norm_rope_store(
                q, k, v, self.q_norm.weight, self.k_norm.weight, rope, k_cache, v_cache,
                batch.slot_mapping, self.q_norm.eps, self.head_dim,
            )  # fmt: skip
        else:
            q, k, v = materialize(q), materialize(k), materialize(v)
            q, k = self._normed_qk(q, k)
            q = q.view(num_tokens, self.num_heads, self.head_dim)
            k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
            v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
            q, k = PartialRotary.rotate(q, k, *rope)
            slots = batch.slot_mapping
            k_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, slots, k)
            v_cache.view(-1, self.num_kv_heads, self.head_dim).index_copy_(0, slots, v)
        out = dispatch.paged_attention(q, k_cache, v_cache, batch, self.scale)
        out = out.reshape(num_tokens, self.num_heads * self.head_dim)
        if self.tp.size == 1:
            return self.o_proj.forward_parts(out)
        return self.tp.all_reduce(self.o_proj(out))

    def _project_qkv(
        self, x: torch.Tensor | PendingNorm
    ) -> tuple[torch.Tensor | PartialSums, torch.Tensor | PartialSums, torch.Tensor | PartialSums]:
        if self.qkv is not None and self.qkv.intact():
            q, k, v = self.qkv(x)
            return q, k, v
        x = materialize(x)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def _normed_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.tp.size == 1:
            return self.q_norm(q), self.k_norm(k)
        sums = torch.cat([SplitRMSNorm.sum_of_squares(q), SplitRMSNorm.sum_of_squares(k)], -1)
        self.tp.all_reduce(sums)
        return self.q_norm.normalize(q, sums[:, :1]), self.k_norm.normalize(k, sums[:, 1:])
