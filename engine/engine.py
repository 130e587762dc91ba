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
from m2agent.engine.runner import workers
from m2agent.engine.runner.model_runner import ModelRunner, SamplingState
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
        if config.cuda_graphs:
            self.runner.capture_decode_graphs(config.max_num_seqs, self.max_model_len)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(config.max_num_seqs, config.max_num_batched_tokens), self.blocks
        )
        self._requests: dict[str, _Request] = {}
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
        """Run the model once over the next batch; return each request's new tokens."""
        if not self.scheduler.has_work:
            return []
        batch = self.scheduler.schedule()
        if not batch.entries:
            return []
        sampling = [e for e in batch.entries if e.samples]
        samplers = [self._requests[e.seq.request_id].sampler for e in sampling]
        tokens = self.runner.execute(batch.entries, samplers)
        self.scheduler.update(batch)
        return [self._append(e, token) for e, token in zip(sampling, tokens, strict=True)]

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
