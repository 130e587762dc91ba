"""The `completions` backend: m2agent renders M2's prompt itself (`render_prompt`) and streams
`/v1/completions`, parsing the raw output with `OutputParser`: exact control of every byte,
whatever the server's chat template or parsers (and the prefix cache sees the same bytes
every turn)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from m2agent.agent.messages import AssistantMessage, CallRecord, Message, Usage, chat_messages
from m2agent.backends.base import StreamEvent, TurnDone
from m2agent.backends.http import sse_events, with_retries
from m2agent.engine.protocol import ContentDelta, OutputParser, ReasoningDelta, render_prompt
from m2agent.engine.protocol.markers import END_OF_TURN


class CompletionsBackend:
    name = "completions"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_tokens: int = 8192,
        temperature: float | None = None,
        timeout_s: float = 600.0,
        client: httpx.Client | None = None,
        retry_base_delay_s: float = 0.5,
    ) -> None:
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.retry_base_delay_s = retry_base_delay_s

    def stream(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": render_prompt(chat_messages(messages), tools or None),
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
            "stop": [END_OF_TURN],
            "skip_special_tokens": False,
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature

        def attempt() -> Iterator[StreamEvent]:
            parser = OutputParser(tools or None)
            finish, usage = "stop", Usage()
            for chunk in sse_events(self.client, self.url, body, self.headers):
                for choice in chunk.get("choices") or []:
                    text = choice.get("text") or ""
                    for event in parser.feed(text):
                        if isinstance(event, ReasoningDelta | ContentDelta):
                            yield event
                    finish = choice.get("finish_reason") or finish
                if isinstance(chunk.get("usage"), Mapping):
                    u = chunk["usage"]
                    details = u.get("prompt_tokens_details") or {}
                    usage = Usage(
                        int(u.get("prompt_tokens") or 0),
                        int(u.get("completion_tokens") or 0),
                        int(details.get("cached_tokens") or 0),
                    )
            parsed = parser.finish()
            for event in parser.flush_events():
                if isinstance(event, ReasoningDelta | ContentDelta):
                    yield event
            calls = tuple(CallRecord(f"call_{uuid.uuid4().hex[:24]}", c) for c in parsed.tool_calls)
            if calls and finish == "stop":
                finish = "tool_calls"
            message = AssistantMessage(parsed.content, parsed.reasoning, calls)
            yield TurnDone(message, usage, finish)

        yield from with_retries(attempt, base_delay_s=self.retry_base_delay_s)
