"""One device's model: the paged KV cache it owns, a forward pass per scheduled batch, and
the sampling of each sequence's next token."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from m2agent.engine.kernels import dispatch
from m2agent.engine.layers.sampler import sample
from m2agent.engine.model_config import ModelConfig
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.runner.batch_builder import build_forward_batch
from m2agent.engine.runner.cuda_graphs import DecodeGraphs
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.scheduler import ScheduledSeq

logger = logging.getLogger(__name__)


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
        self.graphs: DecodeGraphs | None = None

    @property
    def kv_bytes_per_block(self) -> int:
        c = self.config
        per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim
        return per_token * self.block_size * torch.finfo(self.dtype).bits // 8

    def allocate_kv(self, num_blocks: int) -> None:
        """A pool of `num_blocks` blocks, plus one scratch block (the last) that padded rows of
        captured decode graphs write into."""
        c = self.config
        self.graphs = None
        shape = (
            c.num_hidden_layers,
            num_blocks + 1,
            self.block_size,
            c.num_key_value_heads,
            c.head_dim,
        )
        self.k_caches = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_caches = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def capture_decode_graphs(self, max_batch: int, max_model_len: int) -> None:
        """Capture decode graphs (CUDA only; on CPU steps run eagerly)."""
        if self.device.type != "cuda":
            return
        if not dispatch.decode_graphs_supported(self.config.head_dim):
            logger.warning(
                "decode steps run eagerly: no graph-capturable attention for this head size"
            )
            return
        self.graphs = DecodeGraphs(
            self.model,
            self.k_caches,
            self.v_caches,
            max_batch=max_batch,
            max_blocks_per_seq=-(-max_model_len // self.block_size),
            scratch_block=self.k_caches.shape[1] - 1,
        )

    @torch.inference_mode()
    def logits(self, entries: list[ScheduledSeq], *, all_logits: bool = False) -> torch.Tensor:
        """fp32 logits [S, V]: one row per sampling sequence (or per token with all_logits)."""
        graphs = self.graphs
        if graphs and not all_logits and len(entries) <= graphs.max_batch and _is_decode(entries):
            return self._replay(graphs, entries)
        batch = build_forward_batch(entries, self.block_size, self.device, all_logits=all_logits)
        hidden = self.model(batch, self.k_caches, self.v_caches)
        return self.model.compute_logits(hidden[batch.logits_indices])

    def _replay(self, graphs: DecodeGraphs, entries: list[ScheduledSeq]) -> torch.Tensor:
        bs = self.block_size
        positions = [e.seq.num_computed_tokens for e in entries]
        tables = [e.seq.block_table[: p // bs + 1] for e, p in zip(entries, positions, strict=True)]
        return graphs.run(
            [e.seq.token_ids[p] for e, p in zip(entries, positions, strict=True)],
            positions,
            [t[p // bs] * bs + p % bs for t, p in zip(tables, positions, strict=True)],
            tables,
        )

    def execute(self, entries: list[ScheduledSeq], samplers: list[SamplingState]) -> list[int]:
        """Run one step; return the token sampled for each entry that samples, in order."""
        logits = self.logits(entries)
        if all(s.params.is_greedy for s in samplers):
            return logits.argmax(dim=-1).tolist()
        return [sample(row, s.params, s.generator) for row, s in zip(logits, samplers, strict=True)]


def _is_decode(entries: list[ScheduledSeq]) -> bool:
    return all(e.num_tokens == 1 and e.samples for e in entries)
