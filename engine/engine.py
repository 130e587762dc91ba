"""`LLMEngine`: requests in, token deltas out, one `step()` at a time.

Wires the scheduler (which sequences run), the block manager (where their KV lives, prefix
reuse), the model runner (forward + sampling) and the per-request output side (detokenizing,
stop conditions). Not thread-safe: one thread drives it (the server's step loop).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Literal

import torch

from m2agent.engine.block_manager import BlockManager
from m2agent.engine.config import EngineConfig
from m2agent.engine.errors import EngineError
from m2agent.engine.json_mode import (
    JsonObjectConstraint,
    TokenTexts,
    minimum_budget,
    starts_in_reasoning,
)
from m2agent.engine.layers.parallel import SINGLE, TensorParallel
from m2agent.engine.loader import LoadedModel, load_model
from m2agent.engine.protocol import markers
from m2agent.engine.runner import warm_up, workers
from m2agent.engine.runner.model_runner import ModelRunner, SamplingState, StepTokens
from m2agent.engine.runner.workers import Workers
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.scheduler import ScheduledSeq, Scheduler, SchedulerConfig
from m2agent.engine.sequence import Sequence
from m2agent.engine.stopping import StopStringMatcher
from m2agent.engine.tokenizer import IncrementalDetokenizer

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class RequestDelta:
    """What one step produced for one request."""

    request_id: str
    token_ids: list[int]  # new this step (a final EOS/stop token id included)
    text: str  # new text this step (stop strings never appear)
    finish_reason: FinishReason | None  # set on the request's last delta
    num_prompt_tokens: int
    num_cached_tokens: int  # prompt tokens served from the prefix cache
    num_output_tokens: int  # so far

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True, slots=True)
class _Step:
    """A queued model step: what it computes and the tokens it samples (`samples[i]` gets
    `tokens`' i-th); the host reads them with `tokens.wait()`."""

    entries: list[ScheduledSeq]
    samples: list[ScheduledSeq]
    tokens: StepTokens


@dataclass(eq=False)
class _Request:
    seq: Sequence
    sampler: SamplingState
    stop_ids: frozenset[int]
    detokenizer: IncrementalDetokenizer | None
    stops: StopStringMatcher
    max_tokens: int


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.engine_config = config
        self.workers: Workers | None = None
        tp, device = SINGLE, config.device
        if config.num_ranks > 1:
            tp, self.workers, device = workers.start(config)
        try:
            self._start(config, tp, device)
        except BaseException:
            self.close()
            raise

    def _start(self, config: EngineConfig, tp: TensorParallel, device: str) -> None:
        self.loaded: LoadedModel = load_model(
            config.model, device, config.dtype, config.load_format, config.seed, tp, True
        )
        if self.workers is not None:
            self.workers.wait_ready()
        model_config = self.loaded.config
        self.max_model_len = min(
            config.max_model_len or model_config.max_position_embeddings,
            model_config.max_position_embeddings,
        )
        self.runner = ModelRunner(
            self.loaded.model,
            config.block_size,
            self.loaded.device,
            self.loaded.dtype,
            tp,
            self.workers,
        )
        num_blocks = self._kv_blocks()
        self.runner.allocate_kv(num_blocks)
        if config.warm_up is not False and self.loaded.device.type == "cuda":
            limit = min(config.max_num_batched_tokens, self.max_model_len - 1)
            key = warm_up.variant_key(self.loaded.model, self.loaded.device)
            self.runner.warm_up(warm_up.token_counts(limit, key))
        if config.cuda_graphs:
            self.runner.capture_decode_graphs(config.max_num_seqs, self.max_model_len)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), self.blocks
        )
        self._requests: dict[str, _Request] = {}
        overlap = config.overlap_steps
        if overlap is None:
            overlap = self.loaded.device.type == "cuda"
        self._overlap = overlap and self.runner.can_start_ahead
        self._ahead: _Step | None = None  # queued, its tokens not read yet
        self.steps_queued_ahead = 0  # decode steps queued before their inputs reached the host
        self._token_texts: TokenTexts | None = None  # built by the first JSON-mode request
        logger.info("KV cache: %d blocks of %d tokens", num_blocks, config.block_size)

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (a single-process engine needs nothing)."""
        if self.workers is not None:
            runner = getattr(self, "runner", None)
            if runner is not None:
                runner.release_graphs()
            self.workers.close()
            self.workers = None
            if torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()

    # -- requests -----------------------------------------------------------------------------

    def add_request(
        self, request_id: str, prompt: str | Seq[int], params: SamplingParams | None = None
    ) -> int:
        """Queue a request; returns its prompt length in tokens."""
        if request_id in self._requests:
            raise EngineError(f"request id {request_id!r} is already in use")
        params = (params or SamplingParams()).resolve(self.loaded.generation_defaults)
        prompt_ids = self.encode(prompt)
        if len(prompt_ids) >= self.max_model_len:
            raise EngineError(
                f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_model_len}"
            )
        max_tokens = min(params.max_tokens, self.max_model_len - len(prompt_ids))
        tokenizer = self.loaded.tokenizer
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(self.loaded.eos_token_ids)
        constraint = None
        if params.response_format == "json_object":
            constraint = self._json_constraint(prompt_ids, max_tokens, stop_ids)
        seq = Sequence(request_id, prompt_ids, params)
        self.scheduler.add(seq)
        generator = torch.Generator(device=self.loaded.device)
        generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        self._requests[request_id] = _Request(
            seq=seq,
            sampler=SamplingState(params, generator, constraint),
            stop_ids=frozenset(stop_ids),
            detokenizer=IncrementalDetokenizer(tokenizer, params.skip_special_tokens)
            if tokenizer
            else None,
            stops=StopStringMatcher(params.stop),
            max_tokens=max_tokens,
        )
        return len(prompt_ids)

    def _json_constraint(
        self, prompt_ids: list[int], max_tokens: int, stop_ids: set[int]
    ) -> JsonObjectConstraint:
        tokenizer = self.loaded.tokenizer
        if tokenizer is None:
            raise EngineError("JSON mode needs the model's tokenizer")
        if self._token_texts is None:
            self._token_texts = TokenTexts.of(tokenizer.token_bytes())
        think_close = tokenizer.token_to_id(markers.THINK_CLOSE)
        in_reasoning = starts_in_reasoning(
            prompt_ids, tokenizer.token_to_id(markers.THINK_OPEN), think_close
        )
        if max_tokens < minimum_budget(in_reasoning):
            raise EngineError(
                f"JSON mode needs room for at least {minimum_budget(in_reasoning)} output "
                f"tokens; this request has {max_tokens}"
            )
        return JsonObjectConstraint(
            self._token_texts,
            budget=max_tokens,
            in_reasoning=in_reasoning,
            think_close=think_close,
            banned=stop_ids | set(self.loaded.eos_token_ids),
        )

    def abort(self, request_id: str) -> bool:
        """Drop a request and free its KV; False if it was not running or waiting."""
        request = self._requests.pop(request_id, None)
        if request is None:
            return False
        self.scheduler.abort(request_id)
        return True

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    @property
    def num_requests(self) -> int:
        return len(self._requests)

    # -- stepping -----------------------------------------------------------------------------

    def step(self) -> list[RequestDelta]:
        """Run the model once over the next batch; return each request's new tokens.

        With `overlap_steps`, a decode step whose sequences all go on is queued before this
        one's tokens are read (its inputs are those tokens, still on the device), so the
        device runs it while the host does this step's bookkeeping. It is the next call's
        step; a sequence that stops on this step's token wastes its row of it."""
        current, self._ahead = self._ahead, None
        if current is None:
            if not self.scheduler.has_work:
                return []
            batch = self.scheduler.schedule()
            if not batch.entries:
                return []
            samples = [e for e in batch.entries if e.samples]
            samplers = [self._requests[e.seq.request_id].sampler for e in samples]
            current = _Step(batch.entries, samples, self.runner.start(batch.entries, samplers))
        if self._overlap:
            self._ahead = self._start_ahead(current)
        tokens = current.tokens.wait()
        # A sequence aborted while its step was queued is finished: nothing of it is kept.
        for entry in current.entries:
            if not entry.seq.is_finished:
                self.scheduler.update_one(entry)
        deltas = [
            self._append(e, token)
            for e, token in zip(current.samples, tokens, strict=True)
            if not e.seq.is_finished
        ]
        if self._ahead is not None and all(e.seq.is_finished for e in self._ahead.entries):
            self._ahead = None  # all of it stopped here: its result would be dropped
        return deltas

    def _start_ahead(self, current: _Step) -> _Step | None:
        """Queue the decode step after `current`, if it is one: every running sequence is in
        `current`, decodes, and nothing waits for admission (the scheduler's choice would be
        the same batch). Sequences that surely end with `current`'s token are left out."""
        device_tokens = current.tokens.device
        if device_tokens is None or self.scheduler.waiting:
            return None
        if len(current.samples) != len(current.entries) or any(
            e.num_tokens != 1 for e in current.entries
        ):
            return None
        if len(self.scheduler.running) != len(current.entries):
            return None
        rows, nxt, samplers = [], [], []
        for row, entry in enumerate(current.samples):
            seq = entry.seq
            request = self._requests.get(seq.request_id)
            if request is None or seq.is_finished:
                continue
            if request.sampler.constraint is not None:
                return None
            if seq.num_tokens + 1 - seq.num_prompt_tokens >= request.max_tokens:
                continue  # the token in flight is its last
            rows.append(row)
            nxt.append(ScheduledSeq(seq, 1))
            samplers.append(request.sampler)
        if not nxt:
            return None
        # Blocks up to the position after the token in flight (computed tokens + 2).
        blocks = self.blocks
        if sum(blocks.blocks_to_take(e.seq, 2) for e in nxt) > blocks.num_free_blocks:
            return None  # the scheduler's next call decides whom to preempt
        for entry in nxt:
            blocks.allocate(entry.seq, 2)
        if len(rows) < len(current.samples):
            device_tokens = device_tokens[torch.tensor(rows, device=device_tokens.device)]
        tokens = self.runner.start_decode([e.seq for e in nxt], device_tokens, samplers)
        self.steps_queued_ahead += 1
        return _Step(nxt, nxt, tokens)

    def prompt_logits(self, token_ids: Seq[int]) -> torch.Tensor:
        """fp32 logits [T, V] for every position of `token_ids` (a scratch sequence that
        bypasses the scheduler: for checks and tools, with the engine idle)."""
        if self.scheduler.has_work:
            raise EngineError("prompt_logits needs an idle engine")
        seq = Sequence("prompt-logits", list(token_ids), SamplingParams(temperature=0))
        if not self.blocks.can_allocate(seq, seq.num_tokens):
            raise EngineError("the KV cache cannot hold this prompt")
        self.blocks.allocate(seq, seq.num_tokens)
        try:
            return self.runner.logits([ScheduledSeq(seq, seq.num_tokens)], all_logits=True)
        finally:
            self.blocks.free(seq)

    def encode(self, prompt: str | Seq[int]) -> list[int]:
        vocab = self.loaded.config.vocab_size
        if isinstance(prompt, str):
            if self.loaded.tokenizer is None:
                raise EngineError("this model has no tokenizer: pass prompts as token ids")
            ids = self.loaded.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if not all(isinstance(i, int) and 0 <= i < vocab for i in ids):
                raise EngineError(f"token ids must be integers in [0, {vocab})")
        if not ids:
            raise EngineError("the prompt is empty")
        return ids

    # -- internals ----------------------------------------------------------------------------

    def _append(self, entry: ScheduledSeq, token: int) -> RequestDelta:
        seq = entry.seq
        request = self._requests[seq.request_id]
        seq.token_ids.append(token)
        num_out = seq.num_tokens - seq.num_prompt_tokens
        constraint = request.sampler.constraint
        if constraint is not None:
            constraint.advance(token)
        finish: FinishReason | None = None
        if token in request.stop_ids:
            finish, text = "stop", self._tail(request)
        else:
            delta = request.detokenizer.add(token) if request.detokenizer else ""
            text = request.stops.add(delta)
            if request.stops.is_stopped:
                finish = "stop"
            elif constraint is not None and constraint.complete:  # the JSON object closed
                text += self._tail(request)
                finish = "stop"
            elif num_out >= request.max_tokens:
                text += self._tail(request)
                finish = "stop" if request.stops.is_stopped else "length"
        if finish is not None:
            self.scheduler.finish(seq)
            del self._requests[seq.request_id]
        return RequestDelta(
            request_id=seq.request_id,
            token_ids=[token],
            text=text,
            finish_reason=finish,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            num_output_tokens=num_out,
        )

    @staticmethod
    def _tail(request: _Request) -> str:
        tail = request.detokenizer.flush() if request.detokenizer else ""
        return request.stops.add(tail) + request.stops.flush()

    def _kv_blocks(self) -> int:
        config, runner = self.engine_config, self.runner
        if config.num_kv_blocks is not None:
            return config.num_kv_blocks
        per_block = runner.kv_bytes_per_block
        needed_one = -(-self.max_model_len // config.block_size)
        if self.loaded.device.type == "cuda":
            budget = self._gpu_kv_budget()
        else:
            budget = config.cpu_kv_cache_bytes
        num_blocks = budget // per_block
        most_useful = needed_one * config.max_num_seqs
        num_blocks = min(num_blocks, most_useful)
        if num_blocks < min(needed_one, 2):
            raise EngineError(
                f"not enough memory for the KV cache ({budget >> 20} MiB for "
                f"{per_block} bytes per block)"
            )
        return int(num_blocks)

    def _gpu_kv_budget(self) -> int:
        """Bytes left for KV (on the tightest rank) after the weights and the activations of
        a full-size step."""
        config = self.engine_config
        probe_tokens = min(config.max_num_batched_tokens, self.max_model_len - 1)
        return self.runner.measure_kv_budget(probe_tokens, config.gpu_memory_utilization)
