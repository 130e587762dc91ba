"""Chat completions on top of the M2 wire format: request messages -> prompt, and the model's
streamed text -> OpenAI message deltas (reasoning, content, tool calls).

Reasoning is returned like vLLM's `minimax_m2_append_think` by default (inside `content`, after
`<think>`), or split into `reasoning_content` with `reasoning_mode="split"`. History is accepted
in every form vLLM accepts: `reasoning_content`, `reasoning`, `reasoning_details`, or
`<think>` inside `content`; tool-call arguments as JSON strings or objects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from m2agent.engine.protocol import (
    ContentDelta,
    OutputParser,
    ProtocolError,
    ReasoningDelta,
    ToolCall,
    ToolCallParsed,
    render_prompt,
)
from m2agent.engine.server.openai_api import APIError

ReasoningMode = Literal["append_think", "split"]
ROLES = ("system", "developer", "user", "assistant", "tool")


def normalize_messages(messages: Sequence[Any]) -> list[dict[str, Any]]:
    """Messages as the chat template expects them, from any OpenAI/vLLM-accepted shape."""
    if not messages:
        raise APIError(400, "messages must be a non-empty list", param="messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise APIError(400, f"messages[{i}] must be an object", param=f"messages[{i}]")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(
                400,
                f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}",
                param=f"messages[{i}].role",
            )
        msg = dict(message)
        if role == "developer":
            msg["role"] = "system"
        if role == "assistant" and not isinstance(msg.get("reasoning_content"), str):
            reasoning = _reasoning_of(msg)
            if reasoning is not None:
                msg["reasoning_content"] = reasoning
        out.append(msg)
    return out


def _reasoning_of(message: Mapping[str, Any]) -> str | None:
    if isinstance(message.get("reasoning"), str):
        return message["reasoning"]
    details = message.get("reasoning_details")
    if isinstance(details, list):
        texts = [d.get("text", "") for d in details if isinstance(d, Mapping)]
        return "".join(t for t in texts if isinstance(t, str))
    return None


def chat_prompt(
    messages: Sequence[Any], tools: Sequence[Mapping[str, Any]] | None, add_generation_prompt: bool
) -> str:
    try:
        return render_prompt(
            normalize_messages(messages), tools or None, add_generation_prompt=add_generation_prompt
        )
    except ProtocolError as e:
        raise APIError(400, str(e), param="messages") from None


def tool_call_json(call: ToolCall, call_id: str, index: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": call_id,
        "type": "function",
        "function": {
            "name": call.name,
            "arguments": json.dumps(call.arguments, ensure_ascii=False),
        },
    }
    if index is not None:
        entry["index"] = index
    return entry


@dataclass
class ChatTranslator:
    """The model's text, streamed in, as OpenAI chat deltas out."""

    tools: Sequence[Mapping[str, Any]] | None
    parse_tools: bool
    reasoning_mode: ReasoningMode
    max_tool_calls: int | None = None  # 1: the client asked for no parallel tool calls
    _parser: OutputParser = field(init=False)
    _in_think: bool = False
    reasoning: list[str] = field(default_factory=list)
    content: list[str] = field(default_factory=list)
    calls: list[tuple[str, ToolCall]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._parser = OutputParser(
            self.tools if self.parse_tools else None,
            parse_tool_calls=self.parse_tools,
            max_tool_calls=self.max_tool_calls,
        )

    def feed(self, text: str) -> list[dict[str, Any]]:
        return self._translate(self._parser.feed(text))

    def finish(self) -> list[dict[str, Any]]:
        self._parser.finish()
        return self._translate(self._parser.flush_events())

    def message(self) -> dict[str, Any]:
        """The whole assistant message (after `finish`)."""
        content = "".join(self.content)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning_mode == "split":
            message["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            message["tool_calls"] = [tool_call_json(c, i) for i, c in self.calls]
            if not content:
                message["content"] = None
        return message

    def _translate(self, events: list[Any]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, ReasoningDelta):
                self.reasoning.append(event.text)
                if self.reasoning_mode == "split":
                    deltas.append({"reasoning_content": event.text})
                else:
                    text = event.text
                    if not self._in_think:
                        self._in_think = True
                        text = "<think>\n" + text
                    self.content.append(text)
                    deltas.append({"content": text})
            elif isinstance(event, ContentDelta):
                if self._in_think:
                    deltas.append(self._close_think())
                self.content.append(event.text)
                deltas.append({"content": event.text})
            elif isinstance(event, ToolCallParsed):
                if self._in_think:
                    deltas.append(self._close_think())
                call_id = f"call_{uuid.uuid4().hex[:24]}"
                self.calls.append((call_id, event.call))
                deltas.append(
                    {"tool_calls": [tool_call_json(event.call, call_id, len(self.calls) - 1)]}
                )
        return deltas

    def _close_think(self) -> dict[str, Any]:
        self._in_think = False
        self.content.append("\n</think>\n\n")
        return {"content": "\n</think>\n\n"}
