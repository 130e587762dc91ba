"""The `anthropic` backend: the Messages API (MiniMax's Anthropic-compatible endpoint), with
thinking blocks sent back whole (signatures included) and tool results as tool_result blocks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from m2agent.agent.messages import (
    AssistantMessage,
    CallRecord,
    Message,
    ProviderExtras,
    SystemMessage,
    ToolMessage,
    Usage,
    UserMessage,
)
from m2agent.backends.base import StreamEvent, TurnDone
from m2agent.backends.http import sse_events, with_retries
from m2agent.engine.protocol import ContentDelta, ReasoningDelta, ToolCall


def to_anthropic(messages: Sequence[Message]) -> tuple[str, list[dict[str, Any]]]:
    """Typed history -> (system, messages) of the Messages API."""
    system = ""
    out_messages: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            system = message.content
        elif isinstance(message, UserMessage):
            out_messages.append({"role": "user", "content": message.content})
        elif isinstance(message, AssistantMessage):
            blocks = [dict(b) for b in message.extras.anthropic_blocks]
            if not blocks:  # a turn from another backend: rebuild its blocks
                if message.reasoning:
                    blocks.append({"type": "thinking", "thinking": message.reasoning})
                if message.content:
                    blocks.append({"type": "text", "text": message.content})
                for record in message.calls:
                    blocks.append(
                        {
                            "type": "tool_use",
                            "id": record.id,
                            "name": record.call.name,
                            "input": record.call.arguments,
                        }
                    )
            out_messages.append({"role": "assistant", "content": blocks})
        elif isinstance(message, ToolMessage):
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.call_id,
                "content": message.content,
            }
            if message.is_error:
                result["is_error"] = True
            last = out_messages[-1] if out_messages else None
            if last is not None and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(result)
            else:
                out_messages.append({"role": "user", "content": [result]})
    return system, out_messages


def anthropic_tools(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        fn = tool.get("function", tool)
        out.append({"name": fn["name"], "description": fn.get("description", ""),
                    "input_schema": fn.get("parameters") or {"type": "object"}})  # fmt: skip
    return out


class AnthropicBackend:
    name = "anthropic"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        auth_token: str | None = None,
        max_tokens: int = 8192,
        temperature: float | None = None,
        timeout_s: float = 600.0,
        client: httpx.Client | None = None,
        retry_base_delay_s: float = 0.5,
    ) -> None:
        root = base_url.rstrip("/")
        self.url = root + ("/messages" if root.endswith("/v1") else "/v1/messages")
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.headers = {"anthropic-version": "2023-06-01"}
        if api_key:
            self.headers["x-api-key"] = api_key
        if auth_token:  # ANTHROPIC_AUTH_TOKEN, as Claude Code sends it (gateways, proxies)
            self.headers["Authorization"] = f"Bearer {auth_token}"
        self.client = client or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.retry_base_delay_s = retry_base_delay_s

    def stream(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        system, converted = to_anthropic(messages)
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens,
                                "messages": converted, "stream": True}  # fmt: skip
        if system:
            body["system"] = system
        if tools:
            body["tools"] = anthropic_tools(tools)
        if self.temperature is not None:
            body["temperature"] = self.temperature
        offered = {t.get("function", t)["name"] for t in tools}

        def attempt() -> Iterator[StreamEvent]:
            blocks: list[dict[str, Any]] = []
            partial_json: dict[int, str] = {}
            stop, usage = "stop", Usage()
            for event in sse_events(self.client, self.url, body, self.headers):
                kind = event.get("type")
                if kind == "message_start":
                    u = (event.get("message") or {}).get("usage") or {}
                    usage = Usage(
                        int(u.get("input_tokens") or 0),
                        0,
                        int(u.get("cache_read_input_tokens") or 0),
                    )
                elif kind == "content_block_start":
                    blocks.append(dict(event.get("content_block") or {}))
                elif kind == "content_block_delta" and blocks:
                    delta, block = event.get("delta") or {}, blocks[-1]
                    if delta.get("type") == "thinking_delta":
                        block["thinking"] = block.get("thinking", "") + delta["thinking"]
                        yield ReasoningDelta(delta["thinking"])
                    elif delta.get("type") == "signature_delta":
                        block["signature"] = block.get("signature", "") + delta["signature"]
                    elif delta.get("type") == "text_delta":
                        block["text"] = block.get("text", "") + delta["text"]
                        yield ContentDelta(delta["text"])
                    elif delta.get("type") == "input_json_delta":
                        index = len(blocks) - 1
                        partial_json[index] = partial_json.get(index, "") + delta.get(
                            "partial_json", ""
                        )
                elif kind == "message_delta":
                    stop = (event.get("delta") or {}).get("stop_reason") or stop
                    out_tokens = (event.get("usage") or {}).get("output_tokens")
                    if out_tokens is not None:
                        usage = Usage(usage.prompt_tokens, int(out_tokens), usage.cached_tokens)
                elif kind == "message_stop":
                    break
            calls = []
            for index, block in enumerate(blocks):
                if block.get("type") != "tool_use":
                    continue
                error = None
                if index in partial_json:
                    try:
                        block["input"] = json.loads(partial_json[index] or "{}")
                    except json.JSONDecodeError as e:
                        block["input"], error = {}, f"arguments are not valid JSON ({e})"
                name = block.get("name", "")
                if error is None and name not in offered:
                    error = f"unknown tool {name!r}; offered: {', '.join(sorted(offered))}"
                block.setdefault("id", f"toolu_{uuid.uuid4().hex[:24]}")
                calls.append(
                    CallRecord(block["id"], ToolCall(name, dict(block.get("input") or {}), error))
                )
            reasoning = "".join(
                b.get("thinking", "") for b in blocks if b.get("type") == "thinking"
            )
            text = "".join(b.get("text", "") for b in blocks if b.get("type") == "text")
            finish = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}.get(
                stop, stop
            )
            extras = ProviderExtras(tuple(blocks))
            message = AssistantMessage(text, reasoning or None, tuple(calls), extras)
            yield TurnDone(message, usage, finish)

        yield from with_retries(attempt, base_delay_s=self.retry_base_delay_s)
