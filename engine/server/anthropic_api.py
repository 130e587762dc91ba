"""The Anthropic Messages API: POST /v1/messages (streamed and not) and
/v1/messages/count_tokens, as Claude Code and the `anthropic` SDK speak it.

Requests become OpenAI-shaped messages for M2's template; the model's output becomes
`thinking`, `text` and `tool_use` blocks. M2's reasoning is a `thinking` block whose
`signature` is a digest of its text: sent back in history, the block renders into the next prompt
byte for byte (a prefix-cache hit), and an edited one is still used, with a logged warning.
Text blocks that come with `tool_result`s are appended to the last result rather than opening a
user turn, which would drop the task's reasoning from the prompt (M2_FORMAT.md §1).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from m2agent.engine.engine import RequestDelta
from m2agent.engine.errors import EngineError
from m2agent.engine.server.anthropic_codec import (
    MessageBuilder,
    forced_call,
    render,
    sse,
    stop_reason,
    to_conversation,
    usage_json,
)
from m2agent.engine.server.body import ignored_header, read_model
from m2agent.engine.server.generation import (
    Generation,
    Sampling,
    Usage,
    collect,
)
from m2agent.engine.server.openai_api import APIError


class MessagesRequest(BaseModel):
    """POST /v1/messages. Unknown fields (`metadata`'s kin, `cache_control`, `container`,
    `context_management`, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None  # M2 always reasons; enabled/adaptive/disabled
    metadata: dict[str, Any] | None = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[dict[str, Any]]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


# -- routes ---------------------------------------------------------------------------------------


def add_anthropic_routes(app: FastAPI, gen: Generation) -> None:
    @app.post("/v1/messages/count_tokens")
    async def count_tokens(raw: Request) -> JSONResponse:
        req, ignored = await read_model(raw, CountTokensRequest)
        gen.check_model(req.model)
        conversation = to_conversation(req.system, req.messages, req.tools)
        tokens = await gen.encode(render(conversation))
        headers = ignored_header(ignored + conversation.ignored)
        return JSONResponse({"input_tokens": len(tokens)}, headers=headers)

    @app.post("/v1/messages", response_model=None)
    async def messages(raw: Request) -> Any:
        req, ignored = await read_model(raw, MessagesRequest)
        model = gen.check_model(req.model)
        conversation = to_conversation(req.system, req.messages, req.tools)
        ignored += conversation.ignored
        forced = forced_call(req.tool_choice, conversation.tools)
        prompt_ids = await gen.encode(render(conversation))
        sampling = Sampling(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop=req.stop_sequences or [],
        )
        params = gen.sampling_params(sampling, len(prompt_ids), req.max_tokens, clamp=True)
        parse_tools = bool(conversation.tools) and (req.tool_choice or {}).get("type") != "none"
        single = (req.tool_choice or {}).get("disable_parallel_tool_use", False)
        if not isinstance(single, bool):
            raise APIError(
                400, "tool_choice.disable_parallel_tool_use must be a boolean", param="tool_choice"
            )
        builder = MessageBuilder(conversation.tools, parse_tools, 1 if single else None)
        message_id = f"msg_{uuid.uuid4().hex}"
        usage = Usage(len(prompt_ids))
        raw.state.usage = usage.log_fields()
        output_ids: list[int] = []

        def remember(delta: RequestDelta) -> RequestDelta:
            output_ids.extend(delta.token_ids)
            return delta

        deltas = gen.generate(message_id, prompt_ids, params, usage, forced)
        headers = ignored_header(ignored)

        async def ending(visible: str) -> tuple[str, str | None]:
            tail = ""
            if req.stop_sequences and gen.tokenizer is not None and not usage.stopped_by_eos:
                tokenizer = gen.tokenizer
                tail = tokenizer.decode(output_ids)[len(visible) :]
            return stop_reason(usage, builder, req.stop_sequences or [], tail)

        def message(content: list[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage_json(usage),
            }

        if not req.stream:
            texts: list[str] = []

            def on_delta(delta: RequestDelta) -> None:
                texts.append(remember(delta).text)
                builder.feed(delta.text)

            await collect(raw, deltas, on_delta)
            builder.finish()
            raw.state.usage = usage.log_fields()
            reason, sequence = await ending("".join(texts))
            body = {**message(builder.blocks), "stop_reason": reason, "stop_sequence": sequence}
            return JSONResponse(body, headers=headers)

        async def events() -> AsyncIterator[str]:
            started = False
            texts: list[str] = []
            async for delta in deltas:
                if not started:
                    started = True
                    yield sse("message_start", {"type": "message_start", "message": message([])})
                    yield sse("ping", {"type": "ping"})
                texts.append(remember(delta).text)
                for name, body in builder.feed(delta.text):
                    yield sse(name, body)
            for name, body in builder.finish():
                yield sse(name, body)
            raw.state.usage = usage.log_fields()
            reason, sequence = await ending("".join(texts))
            yield sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": usage_json(usage),
                },
            )
            yield sse("message_stop", {"type": "message_stop"})

        return StreamingResponse(
            anthropic_sse(events(), deltas), media_type="text/event-stream", headers=headers
        )


async def anthropic_sse(
    events: AsyncIterator[str], deltas: AsyncIterator[RequestDelta]
) -> AsyncIterator[str]:
    """The events, or an `error` event if generation fails; closing aborts the request."""
    try:
        async for event in events:
            yield event
    except EngineError as e:
        yield sse("error", APIError(500, str(e)).anthropic_body())
    finally:
        await deltas.aclose()  # type: ignore[attr-defined]
