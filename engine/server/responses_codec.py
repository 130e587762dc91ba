"""OpenAI Responses <-> M2, pure (no I/O): input items become OpenAI-shaped messages for
M2's template, the model's output becomes output items and stream events. See
`responses_api.py` for the choices this makes and why."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from m2agent.engine.engine import RequestDelta
from m2agent.engine.protocol import (
    ContentDelta,
    OutputParser,
    ParserEvent,
    ProtocolError,
    ReasoningDelta,
    ToolCallParsed,
    render_prompt,
)
from m2agent.engine.server.generation import Conversation, Usage
from m2agent.engine.server.openai_api import APIError

ENCRYPTED_PREFIX = "m2r1:"


def encrypt_reasoning(text: str) -> str:
    return ENCRYPTED_PREFIX + base64.b64encode(text.encode("utf-8", "surrogatepass")).decode()


def decrypt_reasoning(blob: Any) -> str | None:
    """The reasoning in an `encrypted_content` this server wrote; None for anyone else's."""
    if not isinstance(blob, str) or not blob.startswith(ENCRYPTED_PREFIX):
        return None
    try:
        return base64.b64decode(blob[len(ENCRYPTED_PREFIX) :], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


# -- request -> M2 prompt -------------------------------------------------------------------------


def to_conversation(
    instructions: str | None, items: str | list[dict[str, Any]], tools: Sequence[Any] | None
) -> Conversation:
    ignored: list[str] = []
    system = [instructions] if instructions else []
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    assistant: dict[str, Any] | None = None
    results: list[dict[str, Any]] = []

    def flush_results() -> None:
        # M2 matches results to calls by order: put them in the order the calls were made.
        calls = [c["id"] for c in (messages[-1].get("tool_calls") or [])] if messages else []
        rank = {call_id: i for i, call_id in enumerate(calls)}
        messages.extend(sorted(results, key=lambda r: rank.get(r["tool_call_id"], len(rank))))
        results.clear()

    def open_assistant() -> dict[str, Any]:
        nonlocal assistant
        if assistant is None:
            flush_results()
            assistant = {"role": "assistant", "content": ""}
            messages.append(assistant)
        return assistant

    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise APIError(400, f"{where} must be an object", param=where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            text = _content_text(item.get("content"), where)
            if role in ("system", "developer") and not messages and not results:
                system.append(text)
            elif role == "assistant":
                target = open_assistant()
                if target.get("tool_calls"):  # text after calls starts the next turn
                    assistant = None
                    target = open_assistant()
                target["content"] += text
            elif role in ("user", "system", "developer"):
                assistant = None
                flush_results()
                messages.append({"role": "user", "content": text})
            else:
                raise APIError(400, f"{where}.role {role!r} is not a message role", param=where)
        elif kind == "reasoning":
            if assistant is not None and (
                assistant["content"]
                or assistant.get("tool_calls")
                or "reasoning_content" in assistant
            ):
                assistant = None
            open_assistant()["reasoning_content"] = _reasoning_text(item)
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id") or item.get("id") or ""),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments") or "{}"},
            }
            open_assistant().setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            assistant = None
            output = item.get("output")
            text = output if isinstance(output, str) else _content_text(output, where)
            results.append(
                {"role": "tool", "tool_call_id": str(item.get("call_id") or ""), "content": text}
            )
        elif kind == "item_reference":
            raise APIError(
                400,
                f"{where}: item_reference needs stored responses, which this server does not keep",
                param=where,
            )
        else:
            ignored.append(f"{where} ({kind}: not a message, reasoning or function item)")
    flush_results()
    if system:
        messages.insert(0, {"role": "system", "content": "\n\n".join(system)})
    if not any(m["role"] != "system" for m in messages):
        raise APIError(400, "input holds no message for the model to answer", param="input")
    return Conversation(messages, _tools(tools, ignored), ignored)


def _content_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise APIError(400, f"{where}.content must be a string or a list of parts", param=where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise APIError(
                400,
                f"{where}.content[{j}]: {kind!r} parts are not supported: this model reads text",
                param=f"{where}.content[{j}]",
            )
    return "".join(texts)


def _reasoning_text(item: Mapping[str, Any]) -> str:
    text = decrypt_reasoning(item.get("encrypted_content"))
    if text is not None:
        return text
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list) and parts:
            return "".join(str(p.get("text") or "") for p in parts if isinstance(p, Mapping))
    return ""


def _tools(tools: Sequence[Any] | None, ignored: list[str]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools or []):
        if not isinstance(tool, Mapping):
            raise APIError(400, f"tools[{i}] must be an object", param=f"tools[{i}]")
        if tool.get("type") != "function":
            name = tool.get("name") or tool.get("type")
            ignored.append(f"tools[{i}] ({name}: only function tools are available here)")
            continue
        if not isinstance(tool.get("name"), str):
            raise APIError(400, f"tools[{i}] needs a string name", param=f"tools[{i}]")
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out


def render(conversation: Conversation) -> str:
    try:
        return render_prompt(conversation.messages, conversation.tools or None)
    except ProtocolError as e:
        raise APIError(400, str(e), param="input") from None


# -- model output -> output items and stream events -----------------------------------------------


class ResponseBuilder:
    """The model's text, streamed in, as Responses output items and stream events out."""

    def __init__(
        self,
        tools: list[dict[str, Any]],
        parse_tools: bool,
        include_encrypted: bool,
        max_tool_calls: int | None = None,
    ) -> None:
        self._parser = OutputParser(
            tools if parse_tools else None,
            parse_tool_calls=parse_tools,
            max_tool_calls=max_tool_calls,
        )
        self.include_encrypted = include_encrypted
        self.output: list[dict[str, Any]] = []
        self._open = False
        self._sequence = 0
        self.reasoning_tokens = 0
        self._reasoning_only = True

    @property
    def has_calls(self) -> bool:
        return any(item["type"] == "function_call" for item in self.output)

    def event(self, kind: str, **body: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._sequence, **body}
        self._sequence += 1
        return event

    def feed(self, delta: RequestDelta) -> list[dict[str, Any]]:
        events = self._parser.feed(delta.text)
        if self._reasoning_only:
            self.reasoning_tokens += len(delta.token_ids)
        return self._translate(events)

    def finish(self) -> list[dict[str, Any]]:
        self._parser.finish()
        return self._translate(self._parser.flush_events()) + self._close()

    def _translate(self, events: list[ParserEvent]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in events:
            if not isinstance(event, ReasoningDelta):
                self._reasoning_only = False
            if isinstance(event, ReasoningDelta) and event.text:
                out += self._ensure_open("reasoning")
                out += self._text_delta("reasoning_text", event.text)
            elif isinstance(event, ContentDelta) and event.text:
                out += self._ensure_open("message")
                out += self._text_delta("output_text", event.text)
            elif isinstance(event, ToolCallParsed):
                out += self._close()
                arguments = json.dumps(event.call.arguments, ensure_ascii=False)
                item = {
                    "type": "function_call",
                    "id": f"fc_{uuid.uuid4().hex}",
                    "call_id": f"call_{uuid.uuid4().hex[:24]}",
                    "name": event.call.name,
                    "arguments": "",
                    "status": "in_progress",
                }
                out += self._start(item)
                common = {"item_id": item["id"], "output_index": len(self.output) - 1}
                out.append(
                    self.event("response.function_call_arguments.delta", **common, delta=arguments)
                )
                item["arguments"] = arguments
                out.append(
                    self.event(
                        "response.function_call_arguments.done",
                        **common,
                        arguments=arguments,
                        name=item["name"],
                    )
                )
                out += self._close()
        return out

    def _ensure_open(self, kind: str) -> list[dict[str, Any]]:
        if self._open and self.output[-1]["type"] == kind:
            return []
        out = self._close()
        item: dict[str, Any]
        part: dict[str, Any]
        if kind == "reasoning":
            item = {
                "type": "reasoning",
                "id": f"rs_{uuid.uuid4().hex}",
                "summary": [],
                "content": [],
                "status": "in_progress",
            }
            part = {"type": "reasoning_text", "text": ""}
        else:
            item = {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        out += self._start(item)
        out.append(self.event("response.content_part.added", **self._where(), part=dict(part)))
        item["content"].append(part)
        return out

    def _where(self) -> dict[str, Any]:
        return {
            "item_id": self.output[-1]["id"],
            "output_index": len(self.output) - 1,
            "content_index": 0,
        }

    def _text_delta(self, part_type: str, text: str) -> list[dict[str, Any]]:
        self.output[-1]["content"][0]["text"] += text
        extra: dict[str, Any] = {"logprobs": []} if part_type == "output_text" else {}
        return [self.event(f"response.{part_type}.delta", **self._where(), delta=text, **extra)]

    def _start(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.output.append(item)
        self._open = True
        added = self.event(
            "response.output_item.added",
            output_index=len(self.output) - 1,
            item=json.loads(json.dumps(item)),
        )
        return [added]

    def _close(self) -> list[dict[str, Any]]:
        if not self._open:
            return []
        self._open = False
        item = self.output[-1]
        out = []
        if item["type"] in ("reasoning", "message"):
            part = item["content"][0]
            kind = part["type"]
            extra: dict[str, Any] = {"logprobs": []} if kind == "output_text" else {}
            out.append(
                self.event(f"response.{kind}.done", **self._where(), text=part["text"], **extra)
            )
            out.append(self.event("response.content_part.done", **self._where(), part=part))
        if item["type"] == "reasoning" and self.include_encrypted:
            item["encrypted_content"] = encrypt_reasoning(item["content"][0]["text"])
        item["status"] = "completed"
        out.append(
            self.event("response.output_item.done", output_index=len(self.output) - 1, item=item)
        )
        return out


def usage_json(usage: Usage, reasoning_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {
            "reasoning_tokens": min(reasoning_tokens, usage.completion_tokens)
        },
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def sse(body: dict[str, Any]) -> str:
    return f"event: {body['type']}\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"
