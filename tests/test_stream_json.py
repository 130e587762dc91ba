"""The stream-json encoder against the shape Claude Code's consumers parse, and the input reader."""

from __future__ import annotations

import json

import pytest
from stream_json_shape import check_event, check_stream

from m2agent.stream_json import (
    InputError,
    StreamJsonEncoder,
    ToolOutcome,
    ToolUse,
    Usage,
    dumps,
    read_user_turns,
)


def test_a_whole_run_validates_line_by_line() -> None:
    encoder = StreamJsonEncoder("sess-1", "MiniMax-M2")
    usage = Usage(input_tokens=100, output_tokens=20, cache_read_input_tokens=64)
    events = [
        encoder.init(cwd="/w", tools=["Bash", "mcp__x__y"],
                     mcp_servers=[{"name": "x", "status": "connected"}], permission_mode="default"),
        encoder.assistant(reasoning="think", text="Let me look.",
                          tool_uses=[ToolUse("call_1", "Bash", {"command": "ls"})], usage=usage,
                          stop_reason="tool_use"),
        encoder.tool_results([ToolOutcome("call_1", "a.py", False)]),
        encoder.assistant(text="Done.", usage=usage, stop_reason="end_turn"),
        encoder.result(subtype="success", is_error=False, duration_ms=1234, num_turns=2,
                       result="Done.", usage=usage, extra={"verified": True, "files_changed": []}),
    ]  # fmt: skip
    text = "\n".join(dumps(e) for e in events) + "\n"
    assert all("\n" not in dumps(e) for e in events)
    parsed = check_stream(text)
    first_turn = parsed[1]["message"]
    assert [b["type"] for b in first_turn["content"]] == ["thinking", "text", "tool_use"]
    assert (
        first_turn["stop_reason"] == "tool_use"
        and parsed[3]["message"]["stop_reason"] == "end_turn"
    )
    assert parsed[-1]["m2agent"] == {"verified": True, "files_changed": []}
    assert parsed[-1]["usage"]["cache_read_input_tokens"] == 64


def test_the_checker_rejects_a_wrong_shape() -> None:
    encoder = StreamJsonEncoder("s", "m")
    bad = encoder.result(subtype="success", is_error=False, duration_ms=1, num_turns=1,
                         result="x", usage=Usage())  # fmt: skip
    del bad["num_turns"]
    with pytest.raises(AssertionError, match="num_turns"):
        check_event(bad)


def test_user_turns_are_read_as_they_arrive() -> None:
    lines = [
        json.dumps({"type": "user", "message": {"role": "user", "content": "first"}}),
        "",
        json.dumps({"type": "user", "session_id": "x", "parent_tool_use_id": None,
                    "message": {"role": "user", "content": [{"type": "text", "text": "a"},
                                                            {"type": "text", "text": "b"}]}}),
    ]  # fmt: skip
    assert list(read_user_turns(lines)) == ["first", "a\nb"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1: .*Invalid JSON"),
        ('{"type": "assistant", "message": {"role": "user", "content": "x"}}', "line 1: type"),
        ('{"type": "user", "message": {"role": "user", "content": [{"type": "image"}]}}',
         "only text content"),
        ('{"type": "user", "message": {"role": "user", "content": "  "}}', "empty"),
    ],
)  # fmt: skip
def test_bad_input_lines_are_clear_errors(line: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        list(read_user_turns([line]))
