"""`LLM`: load a MiniMax-M2 checkpoint and generate, one sequence at a time.

The offline entry point (tests, smoke runs, benchmarks). The serving engine (continuous batching,
paged KV, prefix cache) is built on the same model and layers.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from m2agent.engine.errors import EngineError
from m2agent.engine.kv_cache import SequenceKVCache
from m2agent.engine.layers.sampler import sample
from m2agent.engine.model_config import ModelConfig, load_model_config
from m2agent.engine.models.checkpoint import iter_tensors
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.models.weights import init_dummy_weights, load_weights
from m2agent.engine.sampling import SamplingParams, load_generation_defaults
from m2agent.engine.stopping import StopStringMatcher
from m2agent.engine.tokenizer import IncrementalDetokenizer, Tokenizer

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class RequestOutput:
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated ids; a final EOS/stop token id is included
    text: str  # generated text, cut before any stop string
    finish_reason: FinishReason


@dataclass(frozen=True, slots=True)
class _Step:
    token_id: int
    text: str
    finish_reason: FinishReason | None


class LLM:
    """A MiniMax-M2 checkpoint ready to generate.

    model_path: a checkpoint folder (config.json, safetensors, tokenizer.json), or with
    load_format="dummy" a folder or config.json file alone (random weights of the real shapes).
    dtype "auto" is bfloat16 on CUDA and float32 on CPU.
    """

    def __init__(
        self,
        model_path: str | Path,
        device: str = "cpu",
        dtype: str | torch.dtype = "auto",
        load_format: Literal["auto", "dummy"] = "auto",
        *,
        max_model_len: int | None = None,
        seed: int = 0,
    ) -> None:
        path = Path(model_path)
        folder = path.parent if path.is_file() else path
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        self.config: ModelConfig = load_model_config(path)
        self.max_model_len = min(
            max_model_len or self.config.max_position_embeddings,
            self.config.max_position_embeddings,
        )
        self.tokenizer = Tokenizer.from_dir(folder) if Tokenizer.exists(folder) else None
        self.generation_defaults = load_generation_defaults(folder)
        self.eos_token_ids = self._eos_token_ids()

        started = time.perf_counter()
        with torch.device(self.device):
            self.model = MiniMaxM2ForCausalLM(self.config, self.dtype)
        if load_format == "dummy":
            init_dummy_weights(self.model, seed=seed)
        elif load_format == "auto":
            if self.tokenizer is None:
                raise EngineError(f"{folder}: no tokenizer.json; a checkpoint needs its tokenizer")
            load_weights(self.model, iter_tensors(folder), where=str(folder))
        else:
            raise EngineError(f"load_format must be 'auto' or 'dummy', got {load_format!r}")
        self.model.eval()
        logger.info("loaded %s (%s) in %.1fs", folder, load_format, time.perf_counter() - started)

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]],
        params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        """Generate for each prompt (text or token ids), in order."""
        if isinstance(prompts, str):
            prompts = [prompts]
        outputs = []
        for prompt in prompts:
            prompt_ids = self._prompt_ids(prompt)
            token_ids, texts = [], []
            finish: FinishReason = "length"
            for step in self._run(prompt_ids, params or SamplingParams()):
                token_ids.append(step.token_id)
                texts.append(step.text)
                finish = step.finish_reason or finish
            outputs.append(RequestOutput(prompt_ids, token_ids, "".join(texts), finish))
        return outputs

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
        for step in self._run(self._prompt_ids(prompt), params or SamplingParams()):
            yield step.token_id, step.text

    # -- one sequence ---------------------------------------------------------------------------

    @torch.inference_mode()
    def _run(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[_Step]:
        params = params.resolve(self.generation_defaults)
        if len(prompt_ids) >= self.max_model_len:
            raise EngineError(
                f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_model_len}"
            )
        max_new = min(params.max_tokens, self.max_model_len - len(prompt_ids))
        stop_ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(self.eos_token_ids)
        generator = torch.Generator(device=self.device)
        generator.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        detokenizer = (
            IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens)
            if self.tokenizer
            else None
        )
        stops = StopStringMatcher(params.stop)
        cache = SequenceKVCache.allocate(
            self.config, len(prompt_ids) + max_new, self.dtype, self.device
        )

        def finish_text() -> str:
            tail = detokenizer.flush() if detokenizer else ""
            return stops.add(tail) + stops.flush()

        logits = self._forward(prompt_ids, cache, start=0)
        position = len(prompt_ids)
        for produced in range(1, max_new + 1):
            token = sample(logits, params, generator)
            if token in stop_ids:
                yield _Step(token, finish_text(), "stop")
                return
            text = stops.add(detokenizer.add(token) if detokenizer else "")
            if stops.is_stopped:
                yield _Step(token, text, "stop")
                return
            if produced == max_new:
                text += finish_text()
                yield _Step(token, text, "stop" if stops.is_stopped else "length")
                return
            yield _Step(token, text, None)
            logits = self._forward([token], cache, start=position)
            position += 1

    def _forward(self, token_ids: list[int], cache: SequenceKVCache, start: int) -> torch.Tensor:
        """Logits [V] (fp32) of the last of `token_ids`, which sit at positions start.."""
        ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(token_ids), device=self.device)
        hidden = self.model(ids, positions, cache.keys, cache.values, start)
        return self.model.compute_logits(hidden[-1:])[0]

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise EngineError("this model has no tokenizer: pass prompts as token ids")
            ids = self.tokenizer.encode(prompt)
        else:
            ids = list(prompt)
            if not all(isinstance(i, int) and 0 <= i < self.config.vocab_size for i in ids):
                raise EngineError(f"token ids must be integers in [0, {self.config.vocab_size})")
        if not ids:
            raise EngineError("the prompt is empty")
        return ids

    def _eos_token_ids(self) -> tuple[int, ...]:
        ids = self.generation_defaults.get("eos_token_ids") or self.config.eos_token_ids
        if not ids and self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids = (self.tokenizer.eos_token_id,)
        return tuple(ids)


def _resolve_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise EngineError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' was asked for but CUDA is not available here")
    if resolved.type not in ("cpu", "cuda"):
        raise EngineError(f"device {device!r} is not supported: use 'cpu' or 'cuda'")
    return resolved


def _resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise EngineError(f"dtype {dtype} is not supported: use float32 or bfloat16")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise EngineError(f"dtype {dtype!r} is not supported: use 'float32', 'bfloat16' or 'auto'")
    return _DTYPES[dtype]
