"""The shape of Claude Code's stream-json events, as a checker for tests: every line must be
one of these, with these keys and types (extra keys allowed, as consumers ignore them)."""

from __future__ import annotations

import json
from typing import Any

USAGE = {"input_tokens": int, "output_tokens": int, "cache_read_input_tokens": int,
         "cache_creation_input_tokens": int}  # fmt: skip


def _keys(obj: dict[str, Any], spec: dict[str, Any], where: str) -> None:
    for key, kind in spec.items():
        assert key in obj, f"{where}: missing {key!r} in {obj}"
        assert isinstance(obj[key], kind), f"{where}: {key!r} is {type(obj[key]).__name__}"


def check_event(event: dict[str, Any]) -> str:
    """Asserts the event's shape; returns its type."""
    kind = event.get("type")
    if kind == "system":
        _keys(event, {"subtype": str, "session_id": str, "cwd": str, "model": str,
                      "tools": list, "mcp_servers": list}, "system")  # fmt: skip
        for server in event["mcp_servers"]:
            _keys(server, {"name": str, "status": str}, "system.mcp_servers")
    elif kind == "assistant":
        _keys(event, {"message": dict, "session_id": str}, "assistant")
        message = event["message"]
        _keys(message, {"role": str, "content": list, "usage": dict}, "assistant.message")
        assert message["role"] == "assistant"
        _keys(message["usage"], USAGE, "assistant.usage")
        for block in message["content"]:
            if block["type"] == "thinking":
                _keys(block, {"thinking": str}, "thinking block")
            elif block["type"] == "text":
                _keys(block, {"text": str}, "text block")
            elif block["type"] == "tool_use":
                _keys(block, {"id": str, "name": str, "input": dict}, "tool_use block")
            else:
                raise AssertionError(f"unknown assistant block {block}")
    elif kind == "user":
        _keys(event, {"message": dict, "session_id": str}, "user")
        assert event["message"]["role"] == "user"
        for block in event["message"]["content"]:
            assert block["type"] == "tool_result"
            _keys(block, {"tool_use_id": str, "content": str, "is_error": bool}, "tool_result")
    elif kind == "result":
        _keys(event, {"subtype": str, "is_error": bool, "duration_ms": int, "num_turns": int,
                      "result": str, "session_id": str, "usage": dict}, "result")  # fmt: skip
        assert event["subtype"] in ("success", "error_max_turns", "error_during_execution")
        _keys(event["usage"], USAGE, "result.usage")
    else:
        raise AssertionError(f"unknown event type in {event}")
    return str(kind)


def check_stream(text: str) -> list[dict[str, Any]]:
    """Every line of a stream-json output, checked: starts with system/init, ends with one
    result, every tool_use answered by exactly one tool_result."""
    events = [json.loads(line) for line in text.splitlines() if line.strip()]
    kinds = [check_event(e) for e in events]
    assert kinds[0] == "system" and events[0]["subtype"] == "init", kinds
    assert kinds[-1] == "result" and kinds.count("result") == 1, kinds
    used = [b["id"] for e in events if e["type"] == "assistant" for b in e["message"]["content"]
            if b["type"] == "tool_use"]  # fmt: skip
    answered = [b["tool_use_id"] for e in events if e["type"] == "user"
                for b in e["message"]["content"]]  # fmt: skip
    assert sorted(used) == sorted(answered), (used, answered)
    assert len({e["session_id"] for e in events}) == 1
    return events
