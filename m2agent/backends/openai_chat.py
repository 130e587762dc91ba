"""The `openai` backend: streamed chat completions from any OpenAI-compatible server (vLLM,
SGLang, MiniMax's API, `m2agent serve`), with the server's reasoning style learned from its
first answer and reasoning sent back in that style."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from m2agent.backends.base import StreamEvent, TurnDone
from m2agent.backends.http import sse_events, with_retries
from m2agent.backends.wire_openai import ServerStyle, TurnAssembler, to_server_messages


class OpenAIChatBackend:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        timeout_s: float = 600.0,
        client: httpx.Client | None = None,
        retry_base_delay_s: float = 0.5,
    ) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.style = ServerStyle()
        self.retry_base_delay_s = retry_base_delay_s

    def stream(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_server_messages(messages, self.style),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            body["tools"] = list(tools)
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            body["temperature"] = self.temperature

        def attempt() -> Iterator[StreamEvent]:
            assembler = TurnAssembler(tools or None, self.style)
            for chunk in sse_events(self.client, self.url, body, self.headers):
                yield from assembler.feed_chunk(chunk)
            yield TurnDone(assembler.finish())

        yield from with_retries(attempt, base_delay_s=self.retry_base_delay_s)
