"""The conversation's typed messages, exactly as the model produced them (reasoning kept byte
for byte), with provider data that must travel back verbatim in one typed place. Codecs in
`m2agent.backends` translate them to and from each wire format; `record`/`from_record` are the
session file's form. Pure: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from m2agent.engine.protocol import ToolCall


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
        )


@dataclass(frozen=True, slots=True)
class CallRecord:
    """A tool call of an assistant message, with the id it is answered under."""

    id: str
    call: ToolCall


@dataclass(frozen=True, slots=True)
class ProviderExtras:
    """Provider data a later request must send back unchanged; other codecs ignore it."""

    anthropic_blocks: tuple[Mapping[str, Any], ...] = ()  # thinking blocks keep signatures


@dataclass(frozen=True, slots=True)
class SystemMessage:
    content: str


@dataclass(frozen=True, slots=True)
class UserMessage:
    content: str


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    content: str
    reasoning: str | None = None
    calls: tuple[CallRecord, ...] = ()
    extras: ProviderExtras = field(default_factory=ProviderExtras)


@dataclass(frozen=True, slots=True)
class ToolMessage:
    """The answer to one tool call (every call gets exactly one)."""

    call_id: str
    content: str
    is_error: bool = False


Message: TypeAlias = SystemMessage | UserMessage | AssistantMessage | ToolMessage


def chat_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation in chat-template form (role, content, reasoning_content, tool_calls),
    what M2's template and OpenAI-compatible servers read."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": message.content})
        elif isinstance(message, UserMessage):
            out.append({"role": "user", "content": message.content})
        elif isinstance(message, ToolMessage):
            out.append(
                {"role": "tool", "tool_call_id": message.call_id, "content": message.content}
            )
        else:
            chat: dict[str, Any] = {"role": "assistant", "content": message.content}
            if message.reasoning is not None:
                chat["reasoning_content"] = message.reasoning
            if message.calls:
                chat["tool_calls"] = [
                    {
                        "id": record.id,
                        "type": "function",
                        "function": {
                            "name": record.call.name,
                            "arguments": json.dumps(record.call.arguments, ensure_ascii=False),
                        },
                    }
                    for record in message.calls
                ]
            out.append(chat)
    return out


def record(message: Message) -> dict[str, Any]:
    """A message as one JSON object of the session file."""
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.content}
    if isinstance(message, UserMessage):
        return {"role": "user", "content": message.content}
    if isinstance(message, ToolMessage):
        return {
            "role": "tool",
            "call_id": message.call_id,
            "content": message.content,
            "is_error": message.is_error,
        }
    data: dict[str, Any] = {
        "role": "assistant",
        "content": message.content,
        "reasoning": message.reasoning,
        "calls": [
            {"id": r.id, "name": r.call.name, "arguments": r.call.arguments, "error": r.call.error}
            for r in message.calls
        ],
    }
    if message.extras.anthropic_blocks:
        data["anthropic_blocks"] = [dict(b) for b in message.extras.anthropic_blocks]
    return data


def from_record(data: Mapping[str, Any]) -> Message:
    """The inverse of `record`; ValueError for anything else."""
    role = data.get("role")
    try:
        if role == "system":
            return SystemMessage(str(data["content"]))
        if role == "user":
            return UserMessage(str(data["content"]))
        if role == "tool":
            return ToolMessage(str(data["call_id"]), str(data["content"]), bool(data["is_error"]))
        if role == "assistant":
            calls = tuple(
                CallRecord(c["id"], ToolCall(c["name"], dict(c["arguments"]), c.get("error")))
                for c in data.get("calls") or []
            )
            blocks = tuple(dict(b) for b in data.get("anthropic_blocks") or [])
            return AssistantMessage(
                str(data["content"]), data.get("reasoning"), calls, ProviderExtras(blocks)
            )
    except (KeyError, TypeError) as e:
        raise ValueError(f"malformed {role} message: {e}") from None
    raise ValueError(f"unknown message role {role!r}")
