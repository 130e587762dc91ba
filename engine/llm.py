"""`LLM`: the offline entry point (tests, scripts, benchmarks) over `LLMEngine`.

`generate` runs all prompts together through continuous batching; `stream` yields one
prompt's text as it is produced.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from m2agent.engine.config import EngineConfig
from m2agent.engine.engine import FinishReason, LLMEngine
from m2agent.engine.model_config import ModelConfig
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class RequestOutput:
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated ids; a final EOS/stop token id is included
    text: str  # generated text, cut before any stop string
    finish_reason: FinishReason
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache


class LLM:
    """A MiniMax-M2 checkpoint ready to generate.

    model_path: a checkpoint folder (config.json, safetensors, tokenizer.json), or with
    load_format="dummy" a folder or config.json file alone (random weights of the real shapes).
    dtype "auto" is bfloat16 on CUDA and float32 on CPU. Other keyword arguments are
    `EngineConfig` fields (block_size, max_num_seqs, enable_prefix_caching,
    tensor_parallel_size, expert_parallel_size, ...). With more than one rank, worker processes
    run; `close()` (or a `with` block) stops them.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        dtype: str | torch.dtype = "auto",
        load_format: Literal["auto", "dummy"] = "auto",
        **engine_options: Any,
    ) -> None:
        config = EngineConfig(
            model=Path(model_path),
            device=device,
            dtype=dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch."),
            load_format=load_format,
            **engine_options,
        )
        self.engine = LLMEngine(config)
        self._ids = itertools.count()

    def close(self) -> None:
        """Stop the engine's tensor-parallel workers (nothing to do on one device)."""
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def config(self) -> ModelConfig:
        return self.engine.loaded.config

    @property
    def model(self) -> MiniMaxM2ForCausalLM:
        return self.engine.loaded.model

    @property
    def tokenizer(self) -> Tokenizer | None:
        return self.engine.loaded.tokenizer

    @property
    def device(self) -> torch.device:
        return self.engine.loaded.device

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.loaded.dtype

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids), batched; results in prompt order."""
        if isinstance(prompts, str):
            prompts = [prompts]
        ids = [f"llm-{next(self._ids)}" for _ in prompts]
        prompt_ids = {rid: self.engine.encode(p) for rid, p in zip(ids, prompts, strict=True)}
        tokens: dict[str, list[int]] = {rid: [] for rid in ids}
        texts: dict[str, list[str]] = {rid: [] for rid in ids}
        finish: dict[str, FinishReason] = {}
        cached: dict[str, int] = {}
        try:
            for rid in ids:
                self.engine.add_request(rid, prompt_ids[rid], params)
            while len(finish) < len(ids):
                for delta in self.engine.step():
                    tokens[delta.request_id] += delta.token_ids
                    texts[delta.request_id].append(delta.text)
                    cached[delta.request_id] = delta.num_cached_tokens
                    if delta.finish_reason is not None:
                        finish[delta.request_id] = delta.finish_reason
        finally:
            for rid in ids:
                if rid not in finish:
                    self.engine.abort(rid)
        return [
            RequestOutput(
                prompt_ids[rid], tokens[rid], "".join(texts[rid]), finish[rid], cached[rid]
            )
            for rid in ids
        ]

    def stream(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None
    ) -> Iterator[str]:
        """Yield the generated text of one prompt as it is produced (deltas)."""
        for _, text in self.stream_tokens(prompt, params):
            if text:
                yield text

    def stream_tokens(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None
    ) -> Iterator[tuple[int, str]]:
        """Yield (token id, text delta) for each generated token of one prompt."""
        rid = f"llm-{next(self._ids)}"
        self.engine.add_request(rid, prompt, params)
        finished = False
        try:
            while not finished:
                for delta in self.engine.step():
                    if delta.request_id == rid:
                        finished = delta.finished
                        yield delta.token_ids[0], delta.text
        finally:
            if not finished:
                self.engine.abort(rid)

    def prompt_logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """fp32 logits [T, V] at every position of a prompt (teacher forcing)."""
        return self.engine.prompt_logits(token_ids)
