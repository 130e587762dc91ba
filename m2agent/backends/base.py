"""The backend interface: a conversation in, a stream of events out, ending in the assistant
turn exactly as the model produced it (reasoning kept byte for byte)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from m2agent.engine.protocol import ContentDelta, ReasoningDelta, ToolCall

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A tool call of the turn, with the id it is answered under."""

    id: str
    call: ToolCall


@dataclass(frozen=True, slots=True)
class AssistantTurn:
    reasoning: str | None
    content: str
    calls: list[CallRecord] = field(default_factory=list)
    finish_reason: str = "stop"
    usage: Usage = field(default_factory=Usage)
    # Provider data that must travel back verbatim (Anthropic thinking blocks and signatures),
    # kept in the message under keys starting with "x_"; other codecs drop them.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def message(self) -> Message:
        """The turn in the conversation's canonical (chat-template) form."""
        message: Message = {"role": "assistant", "content": self.content, **self.extra}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        if self.calls:
            message["tool_calls"] = [
                {
                    "id": record.id,
                    "type": "function",
                    "function": {
                        "name": record.call.name,
                        "arguments": json.dumps(record.call.arguments, ensure_ascii=False),
                    },
                }
                for record in self.calls
            ]
        return message


@dataclass(frozen=True, slots=True)
class Retrying:
    """The request failed and is being sent again (partial output discarded)."""

    attempt: int
    reason: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class TurnDone:
    turn: AssistantTurn


StreamEvent: TypeAlias = ReasoningDelta | ContentDelta | Retrying | TurnDone


class ModelBackend(Protocol):
    name: str

    def stream(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        """Events of one assistant turn; the last one is `TurnDone`."""
        ...
