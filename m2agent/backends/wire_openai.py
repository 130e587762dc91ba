"""Chat-completions wire format for M2 behind any OpenAI-compatible server, both ways.

Servers return M2's output in different shapes: reasoning inside `content` after `<think>`
(vLLM/SGLang append-think), or split into `reasoning_content` / `reasoning` /
`reasoning_details`; tool calls structured, or raw `<minimax:tool_call>` XML left in
`content` when the server has no tool parser. `TurnAssembler` accepts all of them, remembers
which one the server used (`ServerStyle`), and `to_server_messages` sends the reasoning back in
that same form, so the model always sees its own reasoning. Pure: no I/O.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from m2agent.agent.messages import (
    AssistantMessage,
    CallRecord,
    Message,
    Usage,
    chat_messages,
)
from m2agent.backends.base import TurnDone
from m2agent.engine.protocol import (
    ContentDelta,
    OutputParser,
    ReasoningDelta,
    ToolCall,
)

ReasoningField = Literal["reasoning_content", "reasoning", "reasoning_details"]


@dataclass
class ServerStyle:
    """How this server returns reasoning (learned from its responses)."""

    reasoning_field: ReasoningField | None = None  # None: reasoning comes inside content
    detected: bool = False


def to_server_messages(messages: Sequence[Message], style: ServerStyle) -> list[dict[str, Any]]:
    """Typed history -> what this server expects back (reasoning in its own form)."""
    out = []
    for msg in chat_messages(messages):
        if msg.get("role") == "assistant" and "reasoning_content" in msg:
            reasoning = msg.pop("reasoning_content")
            if style.reasoning_field is None:
                if reasoning:
                    msg["content"] = f"<think>\n{reasoning}\n</think>\n\n{msg.get('content') or ''}"
            elif style.reasoning_field == "reasoning_details":
                msg["reasoning_details"] = [{"type": "reasoning.text", "text": reasoning}]
            else:
                msg[style.reasoning_field] = reasoning
                if style.reasoning_field == "reasoning":  # older vLLM reads the other name
                    msg["reasoning_content"] = reasoning
        out.append(msg)
    return out


@dataclass
class TurnAssembler:
    """Collects one streamed (or whole) chat-completions response into a `TurnDone`."""

    tools: Sequence[Mapping[str, Any]] | None
    style: ServerStyle
    _parser: OutputParser = field(init=False)
    _reasoning: list[str] = field(default_factory=list)
    _structured: dict[int, dict[str, str]] = field(default_factory=dict)
    _finish: str = "stop"
    _usage: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        # Content may carry `<think>…</think>` and raw tool-call XML: the M2 parser handles both.
        self._parser = OutputParser(self.tools, in_reasoning=False)

    def feed_chunk(self, chunk: Mapping[str, Any]) -> list[ReasoningDelta | ContentDelta]:
        """One SSE chunk (or a whole non-streamed response); returns display deltas."""
        events: list[ReasoningDelta | ContentDelta] = []
        if isinstance(chunk.get("usage"), Mapping):
            self._usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or []:
            part = choice.get("delta") or choice.get("message") or {}
            reasoning = self._reasoning_of(part)
            if reasoning:
                self._reasoning.append(reasoning)
                events.append(ReasoningDelta(reasoning))
            if isinstance(part.get("content"), str) and part["content"]:
                events += [
                    e
                    for e in self._parser.feed(part["content"])
                    if isinstance(e, ReasoningDelta | ContentDelta)
                ]
            for call in part.get("tool_calls") or []:
                self._merge_call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def finish(self) -> TurnDone:
        parsed = self._parser.finish()
        if not self.style.detected:
            self.style.detected = True
            if not self._reasoning and parsed.reasoning is not None:
                self.style.reasoning_field = None
        reasoning = "".join(self._reasoning) if self._reasoning else parsed.reasoning
        calls = [self._structured_call(self._structured[i]) for i in sorted(self._structured)]
        if not calls:  # no tool parser on the server: the XML stayed in the content
            calls = [CallRecord(_call_id(), call) for call in parsed.tool_calls]
        finish = "tool_calls" if calls and self._finish == "stop" else self._finish
        return TurnDone(
            AssistantMessage(parsed.content, reasoning, tuple(calls)), self._usage, finish
        )

    def _reasoning_of(self, part: Mapping[str, Any]) -> str:
        for name in ("reasoning_content", "reasoning"):
            if isinstance(part.get(name), str) and part[name]:
                self._note_field(
                    "reasoning_content" if name == "reasoning_content" else "reasoning"
                )
                return part[name]
        details = part.get("reasoning_details")
        if isinstance(details, list) and details:
            self._note_field("reasoning_details")
            return "".join(d.get("text", "") for d in details if isinstance(d, Mapping))
        return ""

    def _note_field(self, name: ReasoningField) -> None:
        if not self.style.detected:
            self.style.reasoning_field, self.style.detected = name, True

    def _merge_call(self, call: Mapping[str, Any]) -> None:
        slot = self._structured.setdefault(int(call.get("index", len(self._structured))), {})
        if call.get("id"):
            slot["id"] = call["id"]
        function = call.get("function") or {}
        if function.get("name"):
            slot["name"] = (
                slot.get("name", "") + function["name"]
                if "arguments" not in slot
                else function["name"]
            )
        if isinstance(function.get("arguments"), str):
            slot["arguments"] = slot.get("arguments", "") + function["arguments"]

    def _structured_call(self, slot: Mapping[str, str]) -> CallRecord:
        name = slot.get("name", "")
        raw = slot.get("arguments") or "{}"
        try:
            arguments = json.loads(raw)
            error = None if isinstance(arguments, dict) else "arguments are not a JSON object"
        except json.JSONDecodeError as e:
            arguments, error = {}, f"arguments are not valid JSON ({e}): {raw[:200]}"
        offered = {str(t.get("function", t).get("name")) for t in self.tools or []}
        if error is None and self.tools is not None and name not in offered:
            error = f"unknown tool {name!r}; the tools offered are: {', '.join(sorted(offered))}"
        return CallRecord(
            slot.get("id") or _call_id(),
            ToolCall(name, arguments if isinstance(arguments, dict) else {}, error),
        )


def _usage(data: Mapping[str, Any]) -> Usage:
    details = data.get("prompt_tokens_details") or {}
    return Usage(
        int(data.get("prompt_tokens") or 0),
        int(data.get("completion_tokens") or 0),
        int((details or {}).get("cached_tokens") or 0),
    )


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
