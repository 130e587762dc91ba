"""The OpenAI Responses API: POST /v1/responses (streamed and not), as Codex CLI and the
`openai` SDK's `client.responses` speak it. Stateless: the server stores nothing, so a request
carries its whole conversation in `input` (Codex's `store: false`).

M2's reasoning comes back as a `reasoning` item: its text in `content` (`reasoning_text`) and,
when `include` asks for `reasoning.encrypted_content`, in `encrypted_content` too (base64 with
a version prefix, not encryption: the point is that clients send it back untouched). A reasoning
item in `input` renders into the prompt byte for byte, so each step of a task hits the prefix
cache. Tools other than functions (`web_search`, `custom`, `namespace`, ...) are declined one by
one: left out of the prompt and named in the `X-M2Agent-Ignored-Fields` header.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from m2agent.engine.errors import EngineError
from m2agent.engine.server.body import ignored_header, read_model
from m2agent.engine.server.generation import Generation, Sampling, Usage, collect
from m2agent.engine.server.openai_api import APIError
from m2agent.engine.server.openai_routes import forced_call
from m2agent.engine.server.responses_codec import (
    ResponseBuilder,
    render,
    sse,
    to_conversation,
    usage_json,
)

ENCRYPTED_INCLUDE = "reasoning.encrypted_content"


class ResponsesRequest(BaseModel):
    """POST /v1/responses. Unknown fields (`prompt_cache_key`, `service_tier`, ...) are
    accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool = False
    store: bool | None = None
    include: list[str] | None = None
    reasoning: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    previous_response_id: str | None = None
    top_logprobs: int | None = None
    metadata: dict[str, Any] | None = None

    def reject_unsupported(self) -> None:
        if self.previous_response_id:
            raise APIError(
                400,
                "this server stores no responses: send the whole conversation in input "
                "(store: false) instead of previous_response_id",
                param="previous_response_id",
                code="unsupported_parameter",
            )
        if self.top_logprobs:
            raise APIError(400, "logprobs are not supported", param="top_logprobs")
        kind = self.format_kind
        if kind not in ("text", "json_object"):
            raise APIError(
                400,
                f"text.format {kind!r} is not supported; use {{'type': 'json_object'}} "
                "(JSON mode: the answer is one JSON object) or {'type': 'text'}",
                param="text.format",
                code="unsupported_parameter",
            )
        if kind == "json_object" and self.tool_choice not in (None, "auto", "none"):
            raise APIError(
                400,
                "text.format json_object cannot be combined with a required tool call",
                param="text.format",
            )

    @property
    def format_kind(self) -> str:
        return ((self.text or {}).get("format") or {}).get("type") or "text"


# -- routes ---------------------------------------------------------------------------------------


def add_responses_routes(app: FastAPI, gen: Generation) -> None:
    @app.post("/v1/responses", response_model=None)
    async def responses(raw: Request) -> Any:
        req, ignored = await read_model(raw, ResponsesRequest)
        req.reject_unsupported()
        model = gen.check_model(req.model)
        conversation = to_conversation(req.instructions, req.input, req.tools)
        ignored += conversation.ignored
        forced = forced_call(req.tool_choice, conversation.tools)
        prompt_ids = await gen.encode(render(conversation), "input")
        sampling = Sampling(
            temperature=req.temperature, top_p=req.top_p, response_format=req.format_kind
        )
        params = gen.sampling_params(
            sampling, len(prompt_ids), req.max_output_tokens, clamp=True, param="max_output_tokens"
        )
        parse_tools = bool(conversation.tools) and req.tool_choice != "none"
        builder = ResponseBuilder(
            conversation.tools,
            parse_tools,
            ENCRYPTED_INCLUDE in (req.include or []),
            max_tool_calls=1 if req.parallel_tool_calls is False else None,
        )
        response_id = f"resp_{uuid.uuid4().hex}"
        usage = Usage(len(prompt_ids))
        raw.state.usage = usage.log_fields()
        deltas = gen.generate(response_id, prompt_ids, params, usage, forced)
        headers = ignored_header(ignored)
        created = time.time()

        def snapshot(status: str) -> dict[str, Any]:
            done = status != "in_progress"
            incomplete = status == "incomplete"
            return {
                "id": response_id,
                "object": "response",
                "created_at": created,
                "status": status,
                "completed_at": time.time() if done else None,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
                "instructions": req.instructions,
                "max_output_tokens": req.max_output_tokens,
                "model": model,
                "output": builder.output if done else [],
                "parallel_tool_calls": req.parallel_tool_calls is not False,
                "previous_response_id": None,
                "reasoning": req.reasoning or {"effort": None, "summary": None},
                "store": False,
                "temperature": req.temperature,
                "text": {"format": {"type": req.format_kind}},
                "tool_choice": req.tool_choice or "auto",
                "tools": [
                    {
                        "type": "function",
                        "name": t["function"]["name"],
                        "description": t["function"].get("description"),
                        "parameters": t["function"]["parameters"],
                        "strict": False,
                    }
                    for t in conversation.tools
                ],
                "top_p": req.top_p,
                "truncation": "disabled",
                "usage": usage_json(usage, builder.reasoning_tokens) if done else None,
                "metadata": req.metadata or {},
            }

        def final_status() -> str:
            return "incomplete" if usage.finish_reason == "length" else "completed"

        if not req.stream:
            await collect(raw, deltas, builder.feed)
            builder.finish()
            raw.state.usage = usage.log_fields()
            return JSONResponse(snapshot(final_status()), headers=headers)

        async def events() -> AsyncIterator[str]:
            yield sse(builder.event("response.created", response=snapshot("in_progress")))
            yield sse(builder.event("response.in_progress", response=snapshot("in_progress")))
            async for delta in deltas:
                for event in builder.feed(delta):
                    yield sse(event)
            for event in builder.finish():
                yield sse(event)
            raw.state.usage = usage.log_fields()
            status = final_status()
            kind = "response.completed" if status == "completed" else "response.incomplete"
            yield sse(builder.event(kind, response=snapshot(status)))

        async def guarded() -> AsyncIterator[str]:
            try:
                async for event in events():
                    yield event
            except EngineError as e:
                failed = {
                    **snapshot("failed"),
                    "error": {"code": "server_error", "message": str(e)},
                }
                yield sse(builder.event("response.failed", response=failed))
            finally:
                await deltas.aclose()

        return StreamingResponse(guarded(), media_type="text/event-stream", headers=headers)
