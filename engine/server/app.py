"""FastAPI routes of the OpenAI-compatible server: /v1/models, /v1/chat/completions,
/v1/completions, /tokenize, /health. Bad input gets a 4xx with an OpenAI-style error body and
the server keeps serving; a client that disconnects aborts its request."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse

from m2agent.engine.engine import RequestDelta
from m2agent.engine.errors import EngineError
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.server.async_bridge import AsyncEngine
from m2agent.engine.server.chat import ChatTranslator, ReasoningMode, chat_prompt
from m2agent.engine.server.openai_api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    _Sampling,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    served_model_names: tuple[str, ...]
    api_key: str | None = None
    reasoning_mode: ReasoningMode = "append_think"


def create_app(engine: AsyncEngine, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="m2agent engine", docs_url=None, redoc_url=None)
    llm = engine.engine
    tokenizer = llm.loaded.tokenizer
    max_model_len = llm.max_model_len
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        elif first.get("type") == "extra_forbidden":
            message = f"unsupported parameter: {param}"
        else:
            message = (
                f"{param}: {first.get('msg', 'invalid value')}" if param else "invalid request"
            )
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        error = APIError(500, f"internal error: {exc}", type="internal_error")
        return JSONResponse(error.body(), status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Any]) -> Any:
        if settings.api_key and request.url.path not in ("/health",):
            header = request.headers.get("authorization", "")
            if header != f"Bearer {settings.api_key}":
                error = APIError(
                    401,
                    "invalid or missing API key",
                    type="authentication_error",
                    code="invalid_api_key",
                )
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    def check_model(name: str | None) -> str:
        if name is not None and name not in settings.served_model_names:
            raise APIError(
                404,
                f"model {name!r} does not exist; "
                f"this server serves {settings.served_model_names[0]!r}",
                param="model",
                code="model_not_found",
                type="not_found_error",
            )
        return settings.served_model_names[0]

    def encode(text: str) -> list[int]:
        if tokenizer is None:
            raise APIError(400, "this model has no tokenizer: send token ids to /v1/completions")
        return tokenizer.encode(text)

    def sampling_params(req: _Sampling, prompt_len: int, max_tokens: int | None) -> SamplingParams:
        if prompt_len >= max_model_len:
            raise APIError(
                400,
                f"the prompt has {prompt_len} tokens; this model's context holds {max_model_len}",
                param="messages",
                code="context_length_exceeded",
            )
        room = max_model_len - prompt_len
        if max_tokens is not None and max_tokens > room:
            raise APIError(
                400,
                f"max_tokens {max_tokens} is more than the {room} tokens left after the "
                f"{prompt_len}-token prompt (context {max_model_len})",
                param="max_tokens",
                code="context_length_exceeded",
            )
        try:
            return SamplingParams(
                temperature=req.temperature,
                top_p=req.top_p,
                top_k=req.top_k,
                min_p=req.min_p,
                seed=req.seed,
                max_tokens=max_tokens or room,
                stop=req.stop_list(),
                stop_token_ids=req.stop_token_ids or [],
                ignore_eos=req.ignore_eos,
                skip_special_tokens=req.skip_special_tokens,
            )
        except ValueError as e:
            raise APIError(400, str(e)) from None

    def usage_chunk(
        base: dict[str, Any], kind: str, last: RequestDelta | None, prompt_len: int
    ) -> dict[str, Any]:
        """The final chunk of `stream_options.include_usage`: no choices, the usage."""
        return {**base, "object": kind, "choices": [], "usage": usage(last, prompt_len)}

    def usage(last: RequestDelta | None, prompt_len: int) -> dict[str, Any]:
        completion = last.num_output_tokens if last else 0
        cached = last.num_cached_tokens if last else 0
        return {
            "prompt_tokens": prompt_len,
            "completion_tokens": completion,
            "total_tokens": prompt_len + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    @app.get("/health")
    async def health() -> JSONResponse:
        if not engine.is_alive:
            return JSONResponse({"status": "error", "error": str(engine.error)}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "requests_in_flight": llm.num_requests,
                "requests_finished": engine.num_finished,
                "requests_aborted": engine.num_aborted,
            }
        )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": settings.served_model_names[0],
                    "object": "model",
                    "created": created,
                    "owned_by": "m2agent",
                    "max_model_len": max_model_len,
                }
            ],
        }

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if req.messages is not None:
            text = chat_prompt(req.messages, req.tools, req.add_generation_prompt)
        else:
            text = req.prompt or ""
        tokens = encode(text)
        return {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(req: ChatCompletionRequest, raw: Request) -> Any:
        req.reject_unsupported()
        model = check_model(req.model)
        prompt_ids = encode(chat_prompt(req.messages, req.tools, req.add_generation_prompt))
        params = sampling_params(req, len(prompt_ids), req.max_completion_tokens or req.max_tokens)
        parse_tools = bool(req.tools) and req.tool_choice != "none"
        translator = ChatTranslator(req.tools, parse_tools, settings.reasoning_mode)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        deltas = engine.generate(request_id, prompt_ids, params)
        base = {"id": request_id, "created": int(time.time()), "model": model}

        def finish_reason(last: RequestDelta | None) -> str:
            reason = last.finish_reason if last and last.finish_reason else "stop"
            return "tool_calls" if translator.calls and reason == "stop" else reason

        if not req.stream:
            last = await collect(raw, deltas, lambda d: translator.feed(d.text))
            translator.finish()
            return {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": translator.message(),
                        "finish_reason": finish_reason(last),
                    }
                ],
                "usage": usage(last, len(prompt_ids)),
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
            body = {
                **base,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }
            if include_usage:
                body["usage"] = None
            return sse(body)

        async def chat_events() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            last: RequestDelta | None = None
            async for delta in deltas:
                last = delta
                for piece in translator.feed(delta.text):
                    yield chunk(piece)
            for piece in translator.finish():
                yield chunk(piece)
            yield chunk({}, finish_reason(last))
            if include_usage:
                yield sse(usage_chunk(base, "chat.completion.chunk", last, len(prompt_ids)))

        events = sse_stream(chat_events(), deltas)
        return StreamingResponse(events, media_type="text/event-stream")

    @app.post("/v1/completions", response_model=None)
    async def completions(req: CompletionRequest, raw: Request) -> Any:
        req.reject_unsupported()
        model = check_model(req.model)
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            prompt_ids = encode(prompt)
        else:
            try:
                prompt_ids = llm.encode(prompt)
            except EngineError as e:
                raise APIError(400, str(e), param="prompt") from None
        params = sampling_params(req, len(prompt_ids), req.max_tokens)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        deltas = engine.generate(request_id, prompt_ids, params)
        base = {"id": request_id, "created": int(time.time()), "model": model}
        texts: list[str] = []

        if not req.stream:
            last = await collect(raw, deltas, lambda d: texts.append(d.text))
            reason = last.finish_reason if last and last.finish_reason else "stop"
            return {
                **base,
                "object": "text_completion",
                "choices": [
                    {"index": 0, "text": "".join(texts), "logprobs": None, "finish_reason": reason}
                ],
                "usage": usage(last, len(prompt_ids)),
            }

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def completion_events() -> AsyncIterator[str]:
            last: RequestDelta | None = None
            async for delta in deltas:
                last = delta
                if delta.text or delta.finish_reason:
                    choice = {
                        "index": 0,
                        "text": delta.text,
                        "logprobs": None,
                        "finish_reason": delta.finish_reason,
                    }
                    yield sse({**base, "object": "text_completion", "choices": [choice]})
            if include_usage:
                yield sse(usage_chunk(base, "text_completion", last, len(prompt_ids)))

        events = sse_stream(completion_events(), deltas)
        return StreamingResponse(events, media_type="text/event-stream")

    return app


async def sse_stream(
    events: AsyncIterator[str], deltas: AsyncIterator[RequestDelta]
) -> AsyncIterator[str]:
    """An SSE body: the events, an error event if generation fails, then `[DONE]`. Closing
    the engine stream in all cases aborts the request when the client went away."""
    try:
        async for event in events:
            yield event
    except EngineError as e:
        yield sse(APIError(500, str(e), type="internal_error").body())
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
    yield "data: [DONE]\n\n"


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def collect(
    raw: Request, deltas: AsyncIterator[RequestDelta], on_delta: Callable[[RequestDelta], Any]
) -> RequestDelta | None:
    """Consume a whole (non-streamed) generation; abort it if the client goes away."""
    last: RequestDelta | None = None

    async def consume() -> None:
        nonlocal last
        async for delta in deltas:
            last = delta
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
        return last
    finally:
        if not task.done():
            task.cancel()
        await deltas.aclose()  # type: ignore[attr-defined]
