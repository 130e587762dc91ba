"""Claude Code's `stream-json` shapes, so tools written against it read m2agent too. Pure: plain
values in, JSON-ready dicts out; the headless front end writes them one per line.

Output (`--output-format stream-json`): a `system` event (subtype `init`: session_id, cwd,
model, tools, mcp_servers, permissionMode), then per model turn an `assistant` event whose
`message.content` holds `thinking`, `text` and `tool_use` blocks, a `user` event with the
turn's `tool_result` blocks, and last a `result` event (subtype `success`, `error_max_turns` or
`error_during_execution`; is_error, duration_ms, num_turns, result, session_id, usage). m2agent's
own fields (verified, files_changed, snapshot, ...) sit under the `m2agent` key of any event.
`--output-format json` prints the `result` event alone.

Input (`--input-format stream-json`): one JSON object per line, each a user turn:
`{"type": "user", "message": {"role": "user", "content": "text" | [{"type": "text", ...}]}}`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

ResultSubtype = Literal["success", "error_max_turns", "error_during_execution"]
# m2agent's approval modes under the names Claude Code's tools know (`permissionMode`, and
# hooks' `permission_mode`).
PERMISSION_MODES = {
    "read-only": "plan",
    "ask": "default",
    "auto-edit": "acceptEdits",
    "auto": "bypassPermissions",
}


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0

    def json(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "output_tokens": self.output_tokens,
        }


@dataclass(frozen=True, slots=True)
class ToolUse:
    id: str
    name: str
    input: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    tool_use_id: str
    content: str
    is_error: bool


@dataclass(frozen=True, slots=True)
class StreamJsonEncoder:
    session_id: str
    model: str

    def init(
        self,
        *,
        cwd: str,
        tools: Sequence[str],
        mcp_servers: Sequence[Mapping[str, str]],  # {"name", "status"}
        permission_mode: str,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "type": "system",
            "subtype": "init",
            "session_id": self.session_id,
            "uuid": _uuid(),
            "cwd": cwd,
            "model": self.model,
            "tools": list(tools),
            "mcp_servers": [dict(s) for s in mcp_servers],
            "permissionMode": permission_mode,
            "apiKeySource": "none",
            "slash_commands": [],
            **({"m2agent": dict(extra)} if extra else {}),
        }

    def assistant(
        self,
        *,
        reasoning: str = "",
        text: str = "",
        tool_uses: Sequence[ToolUse] = (),
        usage: Usage,
        message_id: str | None = None,
        stop_reason: str | None = None,
    ) -> dict[str, Any]:
        """Blocks of one model turn (reasoning, answer text, tool calls, in that order). Claude
        Code streams each block as its own event with the turn's `message_id`; so can callers."""
        content: list[dict[str, Any]] = []
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
        if text:
            content.append({"type": "text", "text": text})
        content += [
            {"type": "tool_use", "id": t.id, "name": t.name, "input": dict(t.input)}
            for t in tool_uses
        ]
        return {
            "type": "assistant",
            "message": {
                "id": message_id or new_message_id(),
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": usage.json(),
            },
            "parent_tool_use_id": None,
            "session_id": self.session_id,
            "uuid": _uuid(),
        }

    def tool_results(self, outcomes: Sequence[ToolOutcome]) -> dict[str, Any]:
        return {
            "type": "user",
            "message": {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": o.tool_use_id,
                        "content": o.content,
                        "is_error": o.is_error,
                    }
                    for o in outcomes
                ],
            },
            "parent_tool_use_id": None,
            "session_id": self.session_id,
            "uuid": _uuid(),
        }

    def result(
        self,
        *,
        subtype: ResultSubtype,
        is_error: bool,
        duration_ms: int,
        num_turns: int,
        result: str,
        usage: Usage,
        extra: Mapping[str, Any] | None = None,
        permission_denials: Sequence[Mapping[str, Any]] = (),
    ) -> dict[str, Any]:
        return {
            "type": "result",
            "subtype": subtype,
            "is_error": is_error,
            "duration_ms": duration_ms,
            "duration_api_ms": duration_ms,
            "num_turns": num_turns,
            "result": result,
            "session_id": self.session_id,
            "total_cost_usd": 0.0,
            "usage": usage.json(),
            "permission_denials": [dict(d) for d in permission_denials],
            "uuid": _uuid(),
            "m2agent": dict(extra or {}),
        }


def dumps(event: Mapping[str, Any]) -> str:
    """One event as one line."""
    return json.dumps(event, ensure_ascii=False, default=str)


class InputError(ValueError):
    """A `--input-format stream-json` line that is not a user turn; names the line."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user"]
    content: str | list[_Block]


class _Line(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["user"]
    message: _Message


def read_user_turns(lines: Iterable[str]) -> Iterator[str]:
    """The text of each user turn, as lines arrive (blank lines skipped)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed = _Line.model_validate_json(line)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise InputError(
                f"stream-json input line {number}: {where}: {first['msg']} (expected "
                '{"type": "user", "message": {"role": "user", "content": "..."}})'
            ) from None
        content = parsed.message.content
        if isinstance(content, str):
            text = content
        else:
            others = sorted({b.type for b in content if b.type != "text"})
            if others:
                raise InputError(
                    f"stream-json input line {number}: only text content is supported, "
                    f"got {', '.join(others)}"
                )
            text = "\n".join(b.text or "" for b in content)
        if not text.strip():
            raise InputError(f"stream-json input line {number}: the user turn is empty")
        yield text


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _uuid() -> str:
    return str(uuid.uuid4())
