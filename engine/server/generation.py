"""What every API surface shares below its wire format: tokenizing off the event loop, checking
the model name and context budget, building `SamplingParams`, running one generation (with an
optional forced tool call), and collecting a non-streamed one while watching for the client
leaving. API modules translate their requests into OpenAI-shaped messages and call this."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.requests import Request

from m2agent.engine.engine import RequestDelta
from m2agent.engine.errors import EngineError
from m2agent.engine.json_mode import minimum_budget
from m2agent.engine.protocol import markers
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.server.async_bridge import AsyncEngine
from m2agent.engine.server.openai_api import APIError

logger = logging.getLogger(__name__)

JSON_MIN_TOKENS = minimum_budget(in_reasoning=True)  # `</think>`, `{`, `}`


@dataclass(frozen=True, slots=True)
class Sampling:
    """The sampling fields a request gives (None: the model's default)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float = 0.0
    seed: int | None = None
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    response_format: str = "text"  # or "json_object" (JSON mode)


@dataclass(frozen=True, slots=True)
class Conversation:
    """A request as the chat template takes it, and what it ignored."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ForcedCall:
    """Make the model call a tool: after its reasoning, the output continues from the opening
    of a tool-call block (`name` None: any tool; else that tool's `<invoke>`)."""

    name: str | None = None

    @property
    def text(self) -> str:
        opening = f"{markers.THINK_CLOSE}\n\n{markers.TOOL_CALL_OPEN}\n<invoke name="
        return opening + (f'"{self.name}">\n' if self.name else '"')


@dataclass
class Usage:
    """Token counts of one response (summed over its engine requests)."""

    prompt_tokens: int
    cached_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    stopped_by_eos: bool = False

    def log_fields(self) -> dict[str, int]:
        return {
            "prompt": self.prompt_tokens,
            "cached": self.cached_tokens,
            "completion": self.completion_tokens,
        }


class Generation:
    """The engine as the API modules see it."""

    def __init__(self, engine: AsyncEngine, served_model_names: Sequence[str]) -> None:
        self.engine = engine
        self.llm = engine.engine
        self.tokenizer = self.llm.loaded.tokenizer
        self.max_model_len = self.llm.max_model_len
        self.served_model_names = tuple(served_model_names)
        self.eos_token_ids = frozenset(self.llm.loaded.eos_token_ids)

    def check_model(self, name: str | None, param: str = "model") -> str:
        if name is not None and name not in self.served_model_names:
            raise APIError(
                404,
                f"model {name!r} does not exist; this server serves {self.served_model_names[0]!r}",
                param=param,
                code="model_not_found",
                type="not_found_error",
            )
        return self.served_model_names[0]

    async def encode(self, text: str, param: str = "messages") -> list[int]:
        """Token ids of `text`, tokenized on a worker thread (a long prompt must not stall
        every other request)."""
        if self.tokenizer is None:
            raise APIError(400, "this model has no tokenizer: send token ids to /v1/completions")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise APIError(
                400,
                f"the text holds a lone UTF-16 surrogate ({text[e.start]!r} at {e.start}); "
                "send valid Unicode",
                param=param,
            ) from None
        return await asyncio.to_thread(self.tokenizer.encode_releasing_gil, text)

    def sampling_params(
        self,
        sampling: Sampling,
        prompt_len: int,
        max_tokens: int | None,
        *,
        clamp: bool = False,
        param: str = "max_tokens",
    ) -> SamplingParams:
        """Validated parameters. `max_tokens` above what the context has left is a 400, or,
        with `clamp` (APIs where it is an upper bound), cut to what is left."""
        if prompt_len >= self.max_model_len:
            raise APIError(
                400,
                f"the prompt has {prompt_len} tokens; this model's context holds "
                f"{self.max_model_len}",
                param="messages",
                code="context_length_exceeded",
            )
        room = self.max_model_len - prompt_len
        if max_tokens is not None and max_tokens < 1:
            raise APIError(400, f"{param} must be at least 1, got {max_tokens}", param=param)
        if max_tokens is not None and max_tokens > room:
            if not clamp:
                raise APIError(
                    400,
                    f"{param} {max_tokens} is more than the {room} tokens left after the "
                    f"{prompt_len}-token prompt (context {self.max_model_len})",
                    param=param,
                    code="context_length_exceeded",
                )
            max_tokens = room
        if sampling.response_format == "json_object" and (max_tokens or room) < JSON_MIN_TOKENS:
            raise APIError(
                400,
                f"JSON mode needs {param} of at least {JSON_MIN_TOKENS} (the end of the "
                "reasoning and the shortest object, {})",
                param=param,
            )
        try:
            return SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=sampling.min_p,
                seed=sampling.seed,
                max_tokens=max_tokens or room,
                stop=list(sampling.stop),
                stop_token_ids=list(sampling.stop_token_ids),
                ignore_eos=sampling.ignore_eos,
                skip_special_tokens=sampling.skip_special_tokens,
                response_format=sampling.response_format,
            )
        except ValueError as e:
            first_word = str(e).split(" ", 1)[0]
            known = first_word in SamplingParams.__dataclass_fields__
            raise APIError(400, str(e), param=first_word if known else None) from None

    async def generate(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        usage: Usage,
        forced: ForcedCall | None = None,
    ) -> AsyncIterator[RequestDelta]:
        """The deltas of one response, `usage` kept up to date. With `forced`, the reasoning
        runs until `</think>` (or the model's end), then the forced opening is appended and
        generation continues from it: two engine requests, the second a prefix-cache hit."""
        think_close = self.tokenizer.token_to_id(markers.THINK_CLOSE) if self.tokenizer else None
        if forced is None or think_close is None:
            async for delta in self._run(request_id, prompt_ids, params, usage):
                yield delta
            return
        think_params = replace(params, stop_token_ids=[*params.stop_token_ids, think_close])
        output_ids: list[int] = []
        last: RequestDelta | None = None
        async for delta in self._run(request_id, prompt_ids, think_params, usage):
            output_ids += delta.token_ids
            last = delta
            yield replace(delta, finish_reason=None) if delta.finished else delta
        assert last is not None  # a request yields at least its final delta
        ended_think = bool(last.token_ids) and last.token_ids[-1] == think_close
        if not (ended_think or usage.stopped_by_eos):  # out of tokens, or a caller's stop string
            yield replace(last, text="", token_ids=[])
            return
        if usage.stopped_by_eos:
            output_ids = output_ids[:-1]  # the turn-ending token: the turn goes on
        # The engine drops a stop token's text, so `</think>` is always written here; its id is
        # already in output_ids when it ended the reasoning.
        forced_ids = await self.encode(
            forced.text[len(markers.THINK_CLOSE) :] if ended_think else forced.text
        )
        usage.completion_tokens += len(forced_ids)
        yield replace(last, text=forced.text, token_ids=forced_ids, finish_reason=None)
        continuation = prompt_ids + output_ids + forced_ids
        left = params.max_tokens - (len(continuation) - len(prompt_ids))
        if left < 1 or len(continuation) >= self.max_model_len:
            usage.finish_reason = "length"
            yield replace(last, text="", token_ids=[], finish_reason="length")
            return
        usage.stopped_by_eos = False
        before = usage.completion_tokens
        more = replace(params, max_tokens=left)
        async for delta in self._run(f"{request_id}-call", continuation, more, usage, count=False):
            usage.completion_tokens = before + delta.num_output_tokens
            yield delta

    async def _run(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        usage: Usage,
        count: bool = True,
    ) -> AsyncIterator[RequestDelta]:
        deltas = self.engine.generate(request_id, prompt_ids, params)
        try:
            async for delta in deltas:
                if count:
                    usage.completion_tokens = delta.num_output_tokens
                    usage.cached_tokens = delta.num_cached_tokens
                if delta.finished:
                    usage.finish_reason = delta.finish_reason or "stop"
                    usage.stopped_by_eos = bool(
                        delta.token_ids and delta.token_ids[-1] in self.eos_token_ids
                    )
                yield delta
        finally:
            await deltas.aclose()


async def collect(
    raw: Request, deltas: AsyncIterator[RequestDelta], on_delta: Callable[[RequestDelta], Any]
) -> None:
    """Consume a whole (non-streamed) generation; abort it if the client goes away."""

    async def consume() -> None:
        async for delta in deltas:
            on_delta(delta)

    task = asyncio.ensure_future(consume())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await raw.is_disconnected():
                task.cancel()
                await asyncio.wait({task})
                raise APIError(499, "client closed the request", type="client_closed")
        exc = task.exception()
        if isinstance(exc, EngineError):
            raise APIError(500, str(exc), type="internal_error")
        if exc is not None:
            raise exc
    finally:
        if not task.done():
            task.cancel()
        await deltas.aclose()  # type: ignore[attr-defined]
