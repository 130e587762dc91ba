"""One device's model: the paged KV cache it owns, a forward pass per scheduled batch, and
the sampling of each sequence's next token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m2agent.engine.layers.sampler import sample
from m2agent.engine.model_config import ModelConfig
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.runner.batch_builder import build_forward_batch
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.scheduler import ScheduledSeq


@dataclass(frozen=True, slots=True)
class SamplingState:
    """How one sequence samples: its resolved parameters and its own seeded generator (so a
    seeded request gives the same tokens whatever else shares its batch)."""

    params: SamplingParams
    generator: torch.Generator


class ModelRunner:
    def __init__(
        self,
        model: MiniMaxM2ForCausalLM,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model, self.block_size, self.device, self.dtype = model, block_size, device, dtype
        self.config: ModelConfig = model.config
        self.k_caches = torch.empty(0)
        self.v_caches = torch.empty(0)

    @property
    def kv_bytes_per_block(self) -> int:
        c = self.config
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim
        return per_token * self.block_size * torch.finfo(self.dtype).bits // 8

    def allocate_kv(self, num_blocks: int) -> None:
        c = self.config
        shape = (
            c.num_hidden_layers,
            num_blocks,
            self.block_size,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.k_caches = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_caches = torch.zeros(shape, dtype=self.dtype, device=self.device)

    @torch.inference_mode()
    def logits(self, entries: list[ScheduledSeq], *, all_logits: bool = False) -> torch.Tensor:
        """fp32 logits [S, V]: one row per sampling sequence (or per token with all_logits)."""
        batch = build_forward_batch(entries, self.block_size, self.device, all_logits=all_logits)
        hidden = self.model(batch, self.k_caches, self.v_caches)
        return self.model.compute_logits(hidden[batch.logits_indices])

    def execute(self, entries: list[ScheduledSeq], samplers: list[SamplingState]) -> list[int]:
        """Run one step; return the token sampled for each entry that samples, in order."""
        logits = self.logits(entries)
        if all(s.params.is_greedy for s in samplers):
            return logits.argmax(dim=-1).tolist()
        return [sample(row, s.params, s.generator) for row, s in zip(logits, samplers, strict=True)]
