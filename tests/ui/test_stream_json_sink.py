"""Loop events -> stream-json lines in Claude Code's streaming shape, validated line by line."""

from __future__ import annotations

import io

from stream_json_shape import check_stream

from m2agent.agent.events import (
    AnswerText,
    Event,
    ReasoningText,
    StepUsage,
    TaskDone,
    ToolFinished,
    ToolStarted,
)
from m2agent.stream_json import StreamJsonEncoder, Usage
from m2agent.ui.stream_json_sink import StreamJsonSink


def test_events_become_claude_code_stream_json() -> None:
    out = io.StringIO()
    encoder = StreamJsonEncoder("s-9", "MiniMax-M2")
    sink = StreamJsonSink(encoder, out)
    sink.start(cwd="/w", tools=["Bash"], mcp_servers=[], permission_mode="default")
    events: list[Event] = [
        ReasoningText("I should "),
        ReasoningText("list."),
        AnswerText("Listing."),
        StepUsage(100, 10, 50),
        ToolStarted("c1", "Bash", {"command": "ls"}, "ls"),
        ToolStarted("c2", "Read", {"file_path": "a"}, "a"),
        ToolFinished("c1", "Bash", "a\nb", False),
        ToolFinished("c2", "Read", "no such file", True),
        ReasoningText("Done."),
        AnswerText("Two files."),
        StepUsage(200, 5, 150),
        TaskDone("answered", 2, "Two files."),
    ]
    for event in events:
        sink.render(event)
    usage = Usage(300, 15, 200)
    sink.write(
        encoder.result(
            subtype="success",
            is_error=False,
            duration_ms=5,
            num_turns=2,
            result="Two files.",
            usage=usage,
            extra={"status": "answered"},
        )
    )
    lines = check_stream(out.getvalue())
    kinds = [e["type"] for e in lines]
    assert kinds == [
        "system",
        "assistant",
        "assistant",
        "assistant",
        "user",
        "user",
        "assistant",
        "result",
    ]
    first, use1, use2 = lines[1]["message"], lines[2]["message"], lines[3]["message"]
    assert first["content"] == [
        {"type": "thinking", "thinking": "I should list.", "signature": ""},
        {"type": "text", "text": "Listing."},
    ]
    assert first["id"] == use1["id"] == use2["id"] != lines[6]["message"]["id"]
    assert use1["content"][0] == {
        "type": "tool_use",
        "id": "c1",
        "name": "Bash",
        "input": {"command": "ls"},
    }
    assert lines[5]["message"]["content"][0]["is_error"] is True
    result = lines[-1]
    assert (result["subtype"], result["num_turns"], result["result"]) == (
        "success",
        2,
        "Two files.",
    )
    assert (
        result["usage"]["input_tokens"] == 300 and result["usage"]["cache_read_input_tokens"] == 200
    )
    assert result["m2agent"] == {"status": "answered"}


def test_a_retried_request_takes_back_its_partial_text() -> None:
    out = io.StringIO()
    encoder = StreamJsonEncoder("s", "m")
    sink = StreamJsonSink(encoder, out)
    sink.start(cwd="/w", tools=[], mcp_servers=[{"name": "gh", "status": "failed"}],
               permission_mode="default")  # fmt: skip
    sink.render(AnswerText("half an ans"))
    sink.discard_partial()
    sink.render(AnswerText("The answer."))
    sink.render(StepUsage(1, 1, 0))
    sink.write(encoder.result(subtype="success", is_error=False, duration_ms=1, num_turns=1,
                              result="The answer.", usage=Usage()))  # fmt: skip
    lines = check_stream(out.getvalue())
    assert lines[1]["message"]["content"] == [{"type": "text", "text": "The answer."}]
