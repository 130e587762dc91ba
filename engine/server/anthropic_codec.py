"""Anthropic Messages <-> M2, pure (no I/O): requests become OpenAI-shaped messages for
M2's template, the model's output becomes `thinking`, `text` and `tool_use` blocks and stream
events. See `anthropic_api.py` for the choices this makes and why."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from m2agent.engine.protocol import (
    ContentDelta,
    OutputParser,
    ParserEvent,
    ProtocolError,
    ReasoningDelta,
    ToolCallParsed,
    render_prompt,
)
from m2agent.engine.server.generation import (
    Conversation,
    ForcedCall,
    Usage,
)
from m2agent.engine.server.openai_api import APIError

logger = logging.getLogger(__name__)

SIGNATURE_PREFIX = "m2-sha256:"
IMAGE_PLACEHOLDER = "[image omitted: this model reads text only]"
BILLING_HEADER = "x-anthropic-billing-header:"
ROLES = ("user", "assistant", "system")


def thinking_signature(thinking: str) -> str:
    return SIGNATURE_PREFIX + hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()


# -- request -> M2 prompt -------------------------------------------------------------------------


def to_conversation(
    system: str | list[dict[str, Any]] | None,
    messages: Sequence[Any],
    tools: Sequence[Any] | None,
) -> Conversation:
    ignored: list[str] = []
    out: list[dict[str, Any]] = []
    system_text = _system_text(system)
    if system_text:
        out.append({"role": "system", "content": system_text})
    if not messages:
        raise APIError(400, "messages: at least one message is required", param="messages")
    call_order: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping) or message.get("role") not in ROLES:
            raise APIError(400, f"{where}.role must be one of {', '.join(ROLES)}", param=where)
        blocks = _blocks(message.get("content"), where)
        if message["role"] == "assistant":
            assistant = _assistant_message(blocks, where)
            call_order = [c["id"] for c in assistant.get("tool_calls", [])]
            out.append(assistant)
        elif message["role"] == "system":  # mid-conversation system text (Claude Code sends it)
            _fold_text(out, _system_text(list(blocks)))
        else:
            for message_out in _user_messages(blocks, where, call_order):
                if message_out["role"] == "user" and out[-1:] and out[-1]["role"] == "tool":
                    _fold_text(out, message_out["content"])
                else:
                    out.append(message_out)
    if out[-1]["role"] == "assistant":
        raise APIError(
            400,
            "the last message is from the assistant: continuing a prefilled assistant turn is "
            "not supported by this server",
            param=f"messages[{len(messages) - 1}]",
        )
    return Conversation(out, _tools(tools, ignored), ignored)


def _system_text(system: str | Sequence[Mapping[str, Any]] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    texts = []
    for j, block in enumerate(system):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise APIError(400, f"system[{j}] must be a text block", param=f"system[{j}]")
        # Claude Code's per-request billing line would change the prompt's first tokens on
        # every request and defeat the prefix cache; it means nothing to the model.
        if not block["text"].startswith(BILLING_HEADER):
            texts.append(block["text"])
    return "\n\n".join(texts)


def _fold_text(out: list[dict[str, Any]], text: str) -> None:
    """Add user-side text after `out`: appended to a trailing tool result or user message (a
    new user turn after tool results would drop the task's reasoning from the prompt)."""
    if out and out[-1]["role"] in ("tool", "user") and isinstance(out[-1]["content"], str):
        out[-1]["content"] += "\n\n" + text
    else:
        out.append({"role": "user", "content": text})


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, Mapping) for b in content):
        raise APIError(400, f"{where}.content must be a string or a list of blocks", param=where)
    return content


def _assistant_message(blocks: Sequence[Mapping[str, Any]], where: str) -> dict[str, Any]:
    thinking: list[str] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "thinking":
            text = str(block.get("thinking") or "")
            signature = block.get("signature")
            if signature and signature != thinking_signature(text):
                logger.warning("%s.content[%d]: thinking does not match its signature", where, j)
            thinking.append(text)
        elif kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("input"), dict):
                raise APIError(
                    400,
                    f"{where}.content[{j}]: tool_use needs a string name and an object input",
                    param=f"{where}.content[{j}]",
                )
            call_id = str(block.get("id") or f"toolu_{uuid.uuid4().hex[:24]}")
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": block["name"], "arguments": block["input"]},
                }
            )
        # redacted_thinking and server-tool blocks carry nothing M2 can read back.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if thinking:
        message["reasoning_content"] = "\n\n".join(thinking)
    if calls:
        message["tool_calls"] = calls
    return message


def _user_messages(
    blocks: Sequence[Mapping[str, Any]], where: str, call_order: list[str]
) -> list[dict[str, Any]]:
    results: list[tuple[int, dict[str, Any]]] = []
    texts: list[str] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "tool_result":
            call_id = str(block.get("tool_use_id") or "")
            text = _result_text(block.get("content"), f"{where}.content[{j}]")
            rank = call_order.index(call_id) if call_id in call_order else len(call_order) + j
            results.append((rank, {"role": "tool", "tool_call_id": call_id, "content": text}))
        elif kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind in ("image", "document"):
            raise APIError(
                400,
                f"{where}.content[{j}]: {kind} blocks are not supported: this model reads text",
                param=f"{where}.content[{j}]",
            )
        else:
            raise APIError(
                400,
                f"{where}.content[{j}]: unsupported block type {kind!r} in a user message",
                param=f"{where}.content[{j}]",
            )
    # M2 matches results to calls by order: put them in the order the calls were made.
    messages = [message for _, message in sorted(results, key=lambda r: r[0])]
    if texts or not messages:
        messages.append({"role": "user", "content": "\n\n".join(texts)})
    return messages


def _result_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of blocks", param=where)
    parts = []
    for block in content:
        if isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
        elif isinstance(block, Mapping) and block.get("type") == "image":
            parts.append(IMAGE_PLACEHOLDER)
    return "\n".join(parts)


def _tools(tools: Sequence[Any] | None, ignored: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, Mapping) or not isinstance(tool.get("name"), str):
            raise APIError(400, f"tools[{i}] needs a string name", param=f"tools[{i}]")
        if tool.get("type") not in (None, "custom"):
            ignored.append(f"tools[{i}] ({tool['type']}: server tools are not available here)")
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("input_schema") or {"type": "object"}
        out.append({"type": "function", "function": function})
    return out


def forced_call(
    tool_choice: Mapping[str, Any] | None, tools: list[dict[str, Any]]
) -> ForcedCall | None:
    kind = (tool_choice or {}).get("type", "auto")
    if kind in ("auto", "none"):
        return None
    if not tools:
        raise APIError(400, f"tool_choice {kind!r} needs tools", param="tool_choice")
    if kind == "any":  # with one tool, that tool
        return ForcedCall(tools[0]["function"]["name"] if len(tools) == 1 else None)
    if kind == "tool":
        name = (tool_choice or {}).get("name")
        if name not in [t["function"]["name"] for t in tools]:
            raise APIError(
                400, f"tool_choice names {name!r}, which is not in tools", param="tool_choice"
            )
        return ForcedCall(name)
    raise APIError(400, "tool_choice.type must be auto, any, tool or none", param="tool_choice")


def render(conversation: Conversation) -> str:
    try:
        return render_prompt(conversation.messages, conversation.tools or None)
    except ProtocolError as e:
        raise APIError(400, str(e), param="messages") from None


# -- model output -> content blocks and stream events ----------------------------------------------


Event = tuple[str, dict[str, Any]]


class MessageBuilder:
    """The model's text, streamed in, as Anthropic content blocks and stream events out."""

    def __init__(
        self, tools: list[dict[str, Any]], parse_tools: bool, max_tool_calls: int | None = None
    ) -> None:
        self._parser = OutputParser(
            tools if parse_tools else None,
            parse_tool_calls=parse_tools,
            max_tool_calls=max_tool_calls,
        )
        self.blocks: list[dict[str, Any]] = []
        self._open = False

    @property
    def has_tool_use(self) -> bool:
        return any(b["type"] == "tool_use" for b in self.blocks)

    def feed(self, text: str) -> list[Event]:
        return self._translate(self._parser.feed(text))

    def finish(self) -> list[Event]:
        self._parser.finish()
        return self._translate(self._parser.flush_events()) + self._close()

    def _translate(self, events: list[ParserEvent]) -> list[Event]:
        out: list[Event] = []
        for event in events:
            if isinstance(event, ReasoningDelta) and event.text:
                out += self._ensure_open("thinking", {"thinking": "", "signature": ""})
                self.blocks[-1]["thinking"] += event.text
                out.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
            elif isinstance(event, ContentDelta) and event.text:
                out += self._ensure_open("text", {"text": ""})
                self.blocks[-1]["text"] += event.text
                out.append(self._delta({"type": "text_delta", "text": event.text}))
            elif isinstance(event, ToolCallParsed):
                out += self._close()
                call_id = f"toolu_{uuid.uuid4().hex[:24]}"
                start = {"type": "tool_use", "id": call_id, "name": event.call.name, "input": {}}
                out += self._start(start)
                self.blocks[-1]["input"] = event.call.arguments
                arguments = json.dumps(event.call.arguments, ensure_ascii=False)
                out.append(self._delta({"type": "input_json_delta", "partial_json": arguments}))
                out += self._close()
        return out

    def _ensure_open(self, kind: str, empty: dict[str, Any]) -> list[Event]:
        if self._open and self.blocks[-1]["type"] == kind:
            return []
        return self._close() + self._start({"type": kind, **empty})

    def _start(self, block: dict[str, Any]) -> list[Event]:
        self.blocks.append(dict(block))
        self._open = True
        index = len(self.blocks) - 1
        return [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        ]

    def _delta(self, delta: dict[str, Any]) -> Event:
        index = len(self.blocks) - 1
        return (
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": delta},
        )

    def _close(self) -> list[Event]:
        if not self._open:
            return []
        self._open = False
        out = []
        block = self.blocks[-1]
        if block["type"] == "thinking":
            block["signature"] = thinking_signature(block["thinking"])
            out.append(self._delta({"type": "signature_delta", "signature": block["signature"]}))
        index = len(self.blocks) - 1
        out.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        return out


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
    }


def stop_reason(
    usage: Usage, builder: MessageBuilder, stop_sequences: Sequence[str], tail: str
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). `tail` is the decoded text after the visible output."""
    if builder.has_tool_use and usage.finish_reason == "stop":
        return "tool_use", None
    if usage.finish_reason == "length":
        return "max_tokens", None
    if not usage.stopped_by_eos and stop_sequences:
        matched = [s for s in stop_sequences if tail.startswith(s)] or list(stop_sequences[:1])
        return "stop_sequence", max(matched, key=len)
    return "end_turn", None


def sse(event: str, body: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"
