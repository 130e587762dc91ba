"""The OpenAI chat/completions surface: /v1/chat/completions, /v1/completions, /tokenize.
Wire models live in `openai_api.py`, message translation in `chat.py`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from m2agent.engine.engine import RequestDelta
from m2agent.engine.errors import EngineError
from m2agent.engine.server.body import ignored_header, read_model
from m2agent.engine.server.chat import ChatTranslator, ReasoningMode, chat_prompt
from m2agent.engine.server.generation import ForcedCall, Generation, Sampling, Usage, collect
from m2agent.engine.server.openai_api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    _Sampling,
)


def sampling_of(req: _Sampling) -> Sampling:
    return Sampling(
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        stop=req.stop_list(),
        stop_token_ids=req.stop_token_ids or [],
        ignore_eos=req.ignore_eos,
        skip_special_tokens=req.skip_special_tokens,
        response_format=req.response_kind,
    )


def forced_call(tool_choice: Any, tools: list[dict[str, Any]] | None) -> ForcedCall | None:
    """`tool_choice` "required" or a named function (chat and Responses shapes)."""
    if tool_choice in (None, "auto", "none"):
        return None
    if not tools:
        raise APIError(400, "tool_choice needs tools", param="tool_choice")
    names = [(t.get("function") or t).get("name") for t in tools if isinstance(t, dict)]
    if tool_choice == "required":  # with one tool, that tool
        return ForcedCall(names[0] if len(names) == 1 else None)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or tool_choice).get("name")
        if name not in names:
            raise APIError(
                400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
            )
        return ForcedCall(name)
    raise APIError(
        400,
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', ...}",
        param="tool_choice",
        code="unsupported_parameter",
    )


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def sse(body: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(body, ensure_ascii=False)}\n\n"


def add_openai_routes(app: FastAPI, gen: Generation, reasoning_mode: ReasoningMode) -> None:
    @app.post("/tokenize")
    async def tokenize(raw: Request) -> Response:
        req, ignored = await read_model(raw, TokenizeRequest)
        gen.check_model(req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if req.messages is not None:
            text = chat_prompt(req.messages, req.tools, req.add_generation_prompt)
        else:
            text = req.prompt or ""
        tokens = await gen.encode(text, "messages" if req.messages is not None else "prompt")
        body = {"count": len(tokens), "max_model_len": gen.max_model_len, "tokens": tokens}
        rendered = await asyncio.to_thread(json.dumps, body)  # a million ids take a while
        return Response(rendered, media_type="application/json", headers=ignored_header(ignored))

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(raw: Request) -> Any:
        req, ignored = await read_model(raw, ChatCompletionRequest)
        req.reject_unsupported()
        model = gen.check_model(req.model)
        forced = forced_call(req.tool_choice, req.tools)
        prompt_ids = await gen.encode(
            chat_prompt(req.messages, req.tools, req.add_generation_prompt)
        )
        max_tokens = req.max_completion_tokens or req.max_tokens
        params = gen.sampling_params(sampling_of(req), len(prompt_ids), max_tokens)
        parse_tools = bool(req.tools) and req.tool_choice != "none"
        # JSON mode: the content is the object alone, so the reasoning goes to its own field.
        mode: ReasoningMode = "split" if req.response_kind == "json_object" else reasoning_mode
        single = 1 if req.parallel_tool_calls is False else None
        translator = ChatTranslator(req.tools, parse_tools, mode, max_tool_calls=single)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        usage = Usage(len(prompt_ids))
        raw.state.usage = usage.log_fields()
        deltas = gen.generate(request_id, prompt_ids, params, usage, forced)
        base = {"id": request_id, "created": int(time.time()), "model": model}
        headers = ignored_header(ignored)

        def finish_reason() -> str:
            reason = usage.finish_reason
            return "tool_calls" if translator.calls and reason == "stop" else reason

        if not req.stream:
            await collect(raw, deltas, lambda d: translator.feed(d.text))
            translator.finish()
            raw.state.usage = usage.log_fields()
            body = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": translator.message(), "finish_reason": finish_reason()}
                ],
                "usage": usage_json(usage),
            }
            return JSONResponse(body, headers=headers)

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
            async for delta in deltas:
                for piece in translator.feed(delta.text):
                    yield chunk(piece)
            for piece in translator.finish():
                yield chunk(piece)
            yield chunk({}, finish_reason())
            raw.state.usage = usage.log_fields()
            if include_usage:
                yield sse(
                    {
                        **base,
                        "object": "chat.completion.chunk",
                        "choices": [],
                        "usage": usage_json(usage),
                    }
                )

        return StreamingResponse(
            openai_sse(chat_events(), deltas), media_type="text/event-stream", headers=headers
        )

    @app.post("/v1/completions", response_model=None)
    async def completions(raw: Request) -> Any:
        req, ignored = await read_model(raw, CompletionRequest)
        req.reject_unsupported()
        model = gen.check_model(req.model)
        prompt = req.single_prompt()
        if isinstance(prompt, str):
            if not prompt:
                raise APIError(400, "prompt must not be empty", param="prompt")
            prompt_ids = await gen.encode(prompt, "prompt")
        else:
            try:
                prompt_ids = gen.llm.encode(prompt)
            except EngineError as e:
                raise APIError(400, str(e), param="prompt") from None
        params = gen.sampling_params(sampling_of(req), len(prompt_ids), req.max_tokens)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        usage = Usage(len(prompt_ids))
        raw.state.usage = usage.log_fields()
        deltas = gen.generate(request_id, prompt_ids, params, usage)
        base = {"id": request_id, "created": int(time.time()), "model": model}
        headers = ignored_header(ignored)
        texts: list[str] = []

        if not req.stream:
            await collect(raw, deltas, lambda d: texts.append(d.text))
            raw.state.usage = usage.log_fields()
            choice = {
                "index": 0,
                "text": "".join(texts),
                "logprobs": None,
                "finish_reason": usage.finish_reason,
            }
            body = {
                **base,
                "object": "text_completion",
                "choices": [choice],
                "usage": usage_json(usage),
            }
            return JSONResponse(body, headers=headers)

        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def completion_events() -> AsyncIterator[str]:
            async for delta in deltas:
                if delta.text or delta.finish_reason:
                    choice = {
                        "index": 0,
                        "text": delta.text,
                        "logprobs": None,
                        "finish_reason": delta.finish_reason,
                    }
                    yield sse({**base, "object": "text_completion", "choices": [choice]})
            raw.state.usage = usage.log_fields()
            if include_usage:
                yield sse(
                    {**base, "object": "text_completion", "choices": [], "usage": usage_json(usage)}
                )

        return StreamingResponse(
            openai_sse(completion_events(), deltas),
            media_type="text/event-stream",
            headers=headers,
        )


async def openai_sse(
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
