"""Decode steps replayed from CUDA graphs, one graph per padded batch size.

A decode step of a small batch is mostly kernel-launch overhead; a captured graph replays all
of its kernels in one launch. Inputs go through static buffers; rows past the real batch are
padding that writes its KV into a scratch block and attends over that block alone.
"""

from __future__ import annotations

import logging

import torch

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.runner.decode_staging import DecodeStaging

logger = logging.getLogger(__name__)


def graph_batch_sizes(max_batch: int) -> list[int]:
    sizes = [1, 2, 4, 8, *range(16, max_batch + 1, 16)]
    return sorted({s for s in sizes if s <= max_batch} | {max_batch})


class DecodeGraphs:
    def __init__(
        self,
        model: MiniMaxM2ForCausalLM,
        k_caches: torch.Tensor,
        v_caches: torch.Tensor,
        max_batch: int,
        max_blocks_per_seq: int,
        scratch_block: int,
    ) -> None:
        self.model, self.k_caches, self.v_caches = model, k_caches, v_caches
        device = k_caches.device
        block_size = k_caches.shape[2]
        self.sizes = graph_batch_sizes(max_batch)
        self.scratch_block = scratch_block
        self.scratch_slot = scratch_block * block_size
        self.token_ids = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.positions = torch.zeros(max_batch, dtype=torch.long, device=device)
        self.slot_mapping = torch.full(
            (max_batch,), self.scratch_slot, dtype=torch.long, device=device
        )
        self.block_tables = torch.full(
            (max_batch, max_blocks_per_seq), scratch_block, dtype=torch.int32, device=device
        )
        self.seq_lens = torch.ones(max_batch, dtype=torch.int32, device=device)
        self.logits_indices = torch.arange(max_batch, dtype=torch.long, device=device)
        self.query_start = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        # Host staging (pinned, so each step's inputs go over in two async copies).
        self._staging = DecodeStaging(
            max_batch, max_blocks_per_seq, scratch_block, self.scratch_slot, pin=True
        )
        self._inputs = torch.empty((4, max_batch), dtype=torch.long, device=device)
        # Recorded once the staged inputs have been copied: the staging is not refilled before
        # (with steps queued ahead, the copy of the previous step may not have run yet).
        self._copied = torch.cuda.Event()
        self._copied.record()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._capture_all()

    def release(self) -> None:
        """Free the graphs now. Graphs that captured NCCL collectives must go before their
        communicator is destroyed (NCCL waits for them otherwise)."""
        torch.cuda.synchronize()
        for graph in self.graphs.values():
            graph.reset()
        self.graphs.clear()
        self.outputs.clear()

    def recapture(self) -> None:
        """Capture every graph again, inputs left as they are (after a switch that changes
        which kernels a step launches: `scripts/ab_decode.py` times such settings)."""
        self.release()
        self._capture_all()

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def _batch(self, size: int) -> ForwardBatch:
        return ForwardBatch(
            token_ids=self.token_ids[:size],
            positions=self.positions[:size],
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size],
            query_start=self.query_start[: size + 1],
            logits_indices=self.logits_indices[:size],
            query_lens_list=[1] * size,
            seq_lens_list=[1] * size,
            block_tables_list=[[self.scratch_block]] * size,
            is_decode=True,
        )

    def _forward(self, size: int) -> torch.Tensor:
        hidden = self.model(self._batch(size), self.k_caches, self.v_caches)
        return self.model.compute_logits(hidden)

    @torch.inference_mode()
    def _capture_all(self) -> None:
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for size in reversed(self.sizes):  # largest first: smaller ones reuse its pool
                for _ in range(2):
                    self._forward(size)  # warm-up: kernels picked and compiled outside capture
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    self.outputs[size] = self._forward(size)
                pool = graph.pool()
                self.graphs[size] = graph
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        logger.info("captured decode graphs for batch sizes %s", self.sizes)

    def run(
        self,
        token_ids: list[int],
        positions: list[int],
        slots: list[int],
        block_tables: list[list[int]],
        device_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [B, V] for a decode batch of B <= max_batch sequences (one token each, at
        `positions`, its KV going to `slots`), by replaying the graph of the next size up.
        With `device_tokens` ([B] int64 on the GPU, e.g. the previous step's samples, not yet
        known to the host) those are the input tokens and `token_ids` are placeholders."""
        n = len(token_ids)
        size = next(s for s in self.sizes if s >= n)
        staging = self._staging
        self._copied.synchronize()
        width = staging.fill(token_ids, positions, slots, block_tables, size)
        self._inputs[:, :size].copy_(staging.ids[:, :size], non_blocking=True)
        self.block_tables[:size, :width].copy_(staging.tables[:size, :width], non_blocking=True)
        self.token_ids[:size].copy_(self._inputs[0, :size])
        self.positions[:size].copy_(self._inputs[1, :size])
        self.slot_mapping[:size].copy_(self._inputs[2, :size])
        self.seq_lens[:size].copy_(self._inputs[3, :size])
        self._copied.record()
        if device_tokens is not None:
            self.token_ids[:n].copy_(device_tokens)
        self.graphs[size].replay()
        return self.outputs[size][:n]
