"""One device's model: the paged KV cache it owns, a forward pass per scheduled batch, and
the sampling of each sequence's next token.

Under tensor parallelism every rank has a `ModelRunner` over its slice of the model. Rank 0
(the engine's) announces each call that runs collectives (`allocate_kv`,
`capture_decode_graphs`, `measure_kv_budget`, `run`) to the other ranks as a typed command
(`messages.py`) before making it; a worker `perform`s it. So all ranks run the same kernels
and collectives in the same order; only rank 0 samples."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, assert_never

import torch

from m2agent.engine.json_mode import JsonObjectConstraint
from m2agent.engine.kernels import compiles, dispatch
from m2agent.engine.layers.parallel import SINGLE, TensorParallel
from m2agent.engine.layers.sampler import sample, sample_constrained, sample_rows
from m2agent.engine.model_config import ModelConfig
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.runner.batch_builder import SeqStep, StepPlan, build_forward_batch
from m2agent.engine.runner.cuda_graphs import DecodeGraphs
from m2agent.engine.runner.messages import (
    AllocateKV,
    CaptureDecodeGraphs,
    MeasureKVBudget,
    RunnerCommand,
    RunStep,
    WarmUp,
)
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.scheduler import ScheduledSeq
from m2agent.engine.sequence import Sequence

logger = logging.getLogger(__name__)


class Peers(Protocol):
    """The other ranks, as rank 0 sees them (`workers.Workers`)."""

    def announce(self, command: RunnerCommand) -> None:
        """Have every other rank perform `command`."""

    def explain_failure(self) -> None:
        """A collective failed here: if another rank died, end the process with its reason."""


@dataclass(frozen=True, slots=True)
class SamplingState:
    """How one sequence samples: its resolved parameters and its own seeded generator (so a
    seeded request gives the same tokens whatever else shares its batch), and its JSON-mode
    constraint when it has one (the engine advances it with each token)."""

    params: SamplingParams
    generator: torch.Generator
    constraint: JsonObjectConstraint | None = None


class StepTokens:
    """The tokens one step sampled, one per sampling sequence: `device` (int64 [S] on the
    model's device, or None when they were drawn on the host) at once, and the host's copy
    when `wait` returns. The copy is queued behind the step, so the host can queue the next
    step before it has the tokens of this one."""

    def __init__(self, device: torch.Tensor | None, host: list[int] | None = None) -> None:
        self.device, self._ready = device, None
        if device is None:
            assert host is not None
            self._host: torch.Tensor | list[int] = host
        elif device.device.type == "cuda":
            self._host = device.to("cpu", non_blocking=True)  # pinned, filled in stream order
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = device

    def wait(self) -> list[int]:
        if self._ready is not None:
            self._ready.synchronize()
        host = self._host
        return host if isinstance(host, list) else host.tolist()


class ModelRunner:
    def __init__(
        self,
        model: MiniMaxM2ForCausalLM,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
        tp: TensorParallel = SINGLE,
        peers: Peers | None = None,
    ) -> None:
        self.model, self.block_size, self.device, self.dtype = model, block_size, device, dtype
        self.tp, self.peers = tp, peers
        self.config: ModelConfig = model.config
        self.num_kv_heads = tp.split(self.config.num_key_value_heads, "num_key_value_heads")
        self.k_caches = torch.empty(0)
        self.v_caches = torch.empty(0)
        self.graphs: DecodeGraphs | None = None
        self.warm_up_note: str | None = None  # what the start-up warm-up did, for reports
        if device.type == "cuda":
            compiles.install()  # kernel variants built at run time are counted and named

    @property
    def kv_bytes_per_block(self) -> int:
        """Bytes of one KV block on this rank (its heads only)."""
        c = self.config
        per_token = 2 * c.num_hidden_layers * self.num_kv_heads * c.head_dim
        return per_token * self.block_size * torch.finfo(self.dtype).bits // 8

    def release_graphs(self) -> None:
        """Free the captured decode graphs (before the process group goes, under TP)."""
        if self.graphs is not None:
            self.graphs.release()
            self.graphs = None

    def perform(self, command: RunnerCommand) -> None:
        """Make the call rank 0 announced (the worker ranks' side; rank 0 calls the methods)."""
        match command:
            case AllocateKV(num_blocks):
                self._allocate_kv(num_blocks)
            case CaptureDecodeGraphs(max_batch, max_model_len):
                self._capture_decode_graphs(max_batch, max_model_len)
            case MeasureKVBudget(probe_tokens, utilization):
                self._measure_kv_budget(probe_tokens, utilization)
            case WarmUp(token_counts):
                self._warm_up(token_counts)
            case RunStep(plan, replay):
                self._run(plan, replay)
            case _:
                assert_never(command)

    @contextlib.contextmanager
    def _on_every_rank(self, command: RunnerCommand) -> Iterator[None]:
        """Rank 0: announce `command`, then make the same call here (the `with` body)."""
        if self.peers is None:
            yield
            return
        self.peers.announce(command)
        try:
            yield
        except RuntimeError:  # a collective broke: say which rank is gone, if one is
            self.peers.explain_failure()
            raise

    def allocate_kv(self, num_blocks: int) -> None:
        """A pool of `num_blocks` blocks, plus one scratch block (the last) that padded rows of
        captured decode graphs write into. On every rank."""
        with self._on_every_rank(AllocateKV(num_blocks)):
            self._allocate_kv(num_blocks)

    def capture_decode_graphs(self, max_batch: int, max_model_len: int) -> None:
        """Capture decode graphs (CUDA only; on CPU steps run eagerly). On every rank."""
        with self._on_every_rank(CaptureDecodeGraphs(max_batch, max_model_len)):
            self._capture_decode_graphs(max_batch, max_model_len)

    def warm_up(self, token_counts: Iterable[int]) -> None:
        """One eager step of each of `token_counts` tokens on the scratch block (the pool's
        blocks are not touched), so the kernel variants they need are built now
        (`runner.warm_up` picks the counts). On every rank, with rank 0's counts: the steps
        hold collectives, so every rank must run the same ones."""
        counts = tuple(token_counts)
        started, mark = time.perf_counter(), compiles.count()
        logger.info("warming up: one eager step of each of %d token counts", len(counts))
        with self._on_every_rank(WarmUp(counts)):
            self._warm_up(counts)
        built = f", {compiles.count() - mark} kernel variants built" if compiles.available() else ""
        self.warm_up_note = (
            f"warmed up eager steps of {len(counts)} token counts up to {max(counts, default=0)}"
            f" in {time.perf_counter() - started:.1f} s{built}"
        )
        logger.info("%s", self.warm_up_note)

    def measure_kv_budget(self, probe_tokens: int, utilization: float) -> int:
        """Bytes left for KV on the tightest rank, after the weights and the activations of a
        full-size step (`probe_tokens` in one prefill) measured by running one."""
        with self._on_every_rank(MeasureKVBudget(probe_tokens, utilization)):
            return self._measure_kv_budget(probe_tokens, utilization)

    def run(self, plan: StepPlan, replay: bool) -> torch.Tensor:
        """One forward pass over `plan`: from a captured graph (`replay`, decode batches) or
        eagerly. Every rank gets the logits."""
        with self._on_every_rank(RunStep(plan, replay)):
            return self._run(plan, replay)

    def _allocate_kv(self, num_blocks: int) -> None:
        c = self.config
        self.release_graphs()
        shape = (
            c.num_hidden_layers,
            num_blocks + 1,
            self.block_size,
            self.num_kv_heads,
            c.head_dim,
        )
        self.k_caches = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v_caches = torch.zeros(shape, dtype=self.dtype, device=self.device)

    def _capture_decode_graphs(self, max_batch: int, max_model_len: int) -> None:
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

    def _warm_up(self, token_counts: tuple[int, ...]) -> None:
        scratch = self.k_caches.shape[1] - 1  # every token's KV goes to (and comes from) it
        for tokens in token_counts:
            table = [scratch] * -(-tokens // self.block_size)
            self._run(StepPlan([SeqStep([0] * tokens, 0, True, table)]), False)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _measure_kv_budget(self, probe_tokens: int, utilization: float) -> int:
        device = self.device
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        probe_blocks = -(-probe_tokens // self.block_size)
        self._allocate_kv(probe_blocks)
        probe = SeqStep([0] * probe_tokens, 0, True, list(range(probe_blocks)))
        self._run(StepPlan([probe]), False)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - self.kv_bytes_per_block * probe_blocks
        self._allocate_kv(0)
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        budget = torch.tensor([max(0, int(total * utilization) - peak)], device=device)
        if self.tp.size > 1:
            torch.distributed.all_reduce(
                budget, op=torch.distributed.ReduceOp.MIN, group=self.tp.group
            )
        return int(budget.item())

    def logits(self, entries: list[ScheduledSeq], *, all_logits: bool = False) -> torch.Tensor:
        """fp32 logits [S, V]: one row per sampling sequence (or per token with all_logits)."""
        plan = StepPlan.of(entries, self.block_size, all_logits)
        graphs = self.graphs
        replay = bool(
            graphs and not all_logits and len(entries) <= graphs.max_batch and plan.is_decode
        )
        return self.run(plan, replay)

    @torch.inference_mode()
    def _run(
        self, plan: StepPlan, replay: bool, device_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`device_tokens`: the input tokens, on the device (`plan`'s are placeholders)."""
        if replay:
            assert self.graphs is not None
            return self._replay(self.graphs, plan, device_tokens)
        batch = build_forward_batch(plan, self.block_size, self.device)
        if device_tokens is not None:
            batch = dataclasses.replace(batch, token_ids=device_tokens)
        hidden = self.model(batch, self.k_caches, self.v_caches)
        return self.model.compute_logits(hidden[batch.logits_indices])

    def _replay(
        self, graphs: DecodeGraphs, plan: StepPlan, device_tokens: torch.Tensor | None = None
    ) -> torch.Tensor:
        bs = self.block_size
        return graphs.run(
            [s.token_ids[0] for s in plan.seqs],
            [s.start for s in plan.seqs],
            [s.block_table[s.start // bs] * bs + s.start % bs for s in plan.seqs],
            [s.block_table for s in plan.seqs],
            device_tokens,
        )

    def start(self, entries: list[ScheduledSeq], samplers: list[SamplingState]) -> StepTokens:
        """Queue one step and the sampling of each entry that samples (in order). Only a
        JSON-mode constraint, which judges each token on the host, makes this wait."""
        logits = self.logits(entries)
        if any(s.constraint is not None for s in samplers):
            return StepTokens(
                None,
                [
                    sample_constrained(row, s.params, s.generator, s.constraint)
                    if s.constraint is not None
                    else sample(row, s.params, s.generator)
                    for row, s in zip(logits, samplers, strict=True)
                ],
            )
        return StepTokens(self._sample(logits, samplers))

    @property
    def can_start_ahead(self) -> bool:
        """Whether `start_decode` can run here (one rank: the other ranks could not see
        input tokens that only this device holds)."""
        return self.peers is None

    def start_decode(
        self, seqs: list[Sequence], tokens: torch.Tensor, samplers: list[SamplingState]
    ) -> StepTokens:
        """Queue a decode step whose input tokens are still on the device: `tokens[i]` is
        sequence i's next token, which its host copy does not hold yet, so it computes
        position `seq.num_tokens` (its blocks must already cover that position)."""
        if not self.can_start_ahead:
            raise RuntimeError("start_decode needs a single-rank runner")
        bs = self.block_size
        plan = StepPlan(
            [
                SeqStep([0], seq.num_tokens, True, seq.block_table[: seq.num_tokens // bs + 1])
                for seq in seqs
            ]
        )
        graphs = self.graphs
        replay = graphs is not None and len(seqs) <= graphs.max_batch
        return StepTokens(self._sample(self._run(plan, replay, tokens), samplers))

    @staticmethod
    def _sample(logits: torch.Tensor, samplers: list[SamplingState]) -> torch.Tensor:
        return sample_rows(logits, [s.params for s in samplers], [s.generator for s in samplers])
