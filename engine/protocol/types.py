"""Values the output parser produces: the parsed turn, its tool calls and streaming events."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One `<invoke>`: the tool's name, its typed arguments, and why it is invalid (if it is)."""

    name: str
    arguments: dict[str, Any]
    error: str | None = None

    @property
    def is_valid(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class ParsedOutput:
    """A whole assistant turn: reasoning (None when the text had no reasoning part), content
    (text outside tool-call blocks, in order) and the tool calls, invalid ones included."""

    reasoning: str | None
    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)

    def to_message(self, call_ids: list[str] | None = None) -> dict[str, Any]:
        """This turn as an OpenAI-shaped assistant message (arguments as JSON strings)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            ids = call_ids or [f"call_{uuid.uuid4().hex[:24]}" for _ in self.tool_calls]
            if len(ids) != len(self.tool_calls):
                raise ValueError("call_ids must have one id per tool call")
            message["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": json.dumps(call.arguments, ensure_ascii=False),
                    },
                }
                for call_id, call in zip(ids, self.tool_calls, strict=True)
            ]
        return message


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    """An `<invoke>` tag was read: its name is known, its arguments are not yet."""

    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallParsed:
    """An `<invoke>` is complete (or ended by the end of the output)."""

    index: int
    call: ToolCall


ParserEvent = ReasoningDelta | ContentDelta | ToolCallStarted | ToolCallParsed
