"""The `openai` backend: streamed chat completions from any OpenAI-compatible server (vLLM,
SGLang, MiniMax's API, `m2agent serve`), with the server's reasoning style learned from its
first answer and reasoning sent back in that style."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from m2agent.agent.messages import Message
from m2agent.backends.base import StreamEvent
from m2agent.backends.http import sse_events, with_retries
from m2agent.backends.wire_openai import ServerStyle, TurnAssembler, to_server_messages
from m2agent.tools.files import atomic_write


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
        style_cache: Path | None = None,
    ) -> None:
        """`style_cache`: a JSON file remembering each endpoint's reasoning style, so a new
        process sends reasoning back in the server's form from its first request."""
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.max_tokens, self.temperature = model, max_tokens, temperature
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = client or httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0))
        self.style_cache = style_cache
        self.style = self._load_style()
        self.retry_base_delay_s = retry_base_delay_s

    def stream(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
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
            was_detected = self.style.detected
            for chunk in sse_events(self.client, self.url, body, self.headers):
                yield from assembler.feed_chunk(chunk)
            done = assembler.finish()
            if self.style.detected and not was_detected:
                self._save_style()
            yield done

        yield from with_retries(attempt, base_delay_s=self.retry_base_delay_s)

    def _load_style(self) -> ServerStyle:
        if self.style_cache is None or not self.style_cache.is_file():
            return ServerStyle()
        try:
            known = json.loads(self.style_cache.read_text(encoding="utf-8")).get(self.url)
        except (OSError, ValueError, AttributeError):
            return ServerStyle()
        if not isinstance(known, dict):
            return ServerStyle()
        field = known.get("reasoning_field")
        if field not in (None, "reasoning_content", "reasoning", "reasoning_details"):
            return ServerStyle()
        return ServerStyle(field, detected=True)

    def _save_style(self) -> None:
        if self.style_cache is None:
            return
        try:
            known = json.loads(self.style_cache.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            known = {}
        if not isinstance(known, dict):
            known = {}
        known[self.url] = {"reasoning_field": self.style.reasoning_field}
        atomic_write(self.style_cache, json.dumps(known, indent=2))
