"""Backends against a real loopback server in every M2 serving style: the turn is parsed the
same way, and the reasoning goes back to the server in the form that server expects."""

from __future__ import annotations

from typing import Any

import pytest
from model_server import FakeM2Server

from m2agent.agent.messages import (
    Message,
    SystemMessage,
    ToolMessage,
    UserMessage,
    chat_messages,
)
from m2agent.backends.anthropic import AnthropicBackend
from m2agent.backends.base import Retrying, TurnDone
from m2agent.backends.completions import CompletionsBackend
from m2agent.backends.openai_chat import OpenAIChatBackend
from m2agent.engine.protocol import ContentDelta, ReasoningDelta, render_prompt
from m2agent.errors import BackendError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "description": "Read a file",
            "parameters": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}, "limit": {"type": "integer"}},
            },
        },
    }
]
TURN_1 = (
    "The test is failing; read it first.\n</think>\n\nReading the test.\n<minimax:tool_call>\n"
    '<invoke name="Read">\n<parameter name="file_path">tests/test_calc.py</parameter>\n'
    '<parameter name="limit">50</parameter>\n</invoke>\n</minimax:tool_call>'
)
TURN_2 = "add() subtracts.\n</think>\n\nThe bug is in add()."
STYLES = ["append_think", "split", "raw", "completions", "anthropic"]


def backend_for(style: str, url: str) -> Any:
    if style == "anthropic":
        return AnthropicBackend(url, "fake-m2", retry_base_delay_s=0)
    if style == "completions":
        return CompletionsBackend(url, "fake-m2", retry_base_delay_s=0)
    return OpenAIChatBackend(url, "fake-m2", retry_base_delay_s=0)


def run_turn(backend: Any, messages: list, tools: list) -> tuple[TurnDone, list]:
    events = list(backend.stream(messages, tools))
    assert isinstance(events[-1], TurnDone)
    return events[-1], events[:-1]


@pytest.mark.parametrize("style", STYLES)
def test_turns_parse_and_reasoning_goes_back_in_the_server_style(style: str) -> None:
    with FakeM2Server([TURN_1, TURN_2], style) as server:
        backend = backend_for(style, server.url)
        history: list[Message] = [SystemMessage("You are m2agent."), UserMessage("Fix the test")]
        done, events = run_turn(backend, history, TOOLS)
        turn = done.message
        assert turn.reasoning == "The test is failing; read it first."
        assert turn.content == "Reading the test."
        assert [(c.call.name, c.call.arguments) for c in turn.calls] == [
            ("Read", {"file_path": "tests/test_calc.py", "limit": 50})
        ]
        assert done.finish_reason == "tool_calls"
        assert done.usage.cached_tokens == 50
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == turn.reasoning
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == turn.content

        history += [turn, ToolMessage(turn.calls[0].id, "def test_add(): ...")]
        second = run_turn(backend, history, TOOLS)[0].message
        assert second.reasoning == "add() subtracts." and second.content == "The bug is in add()."
        sent = server.requests[1]
        if style == "anthropic":
            thinking, text, tool_use = sent["messages"][1]["content"]
            assert thinking == {
                "type": "thinking",
                "thinking": "The test is failing; read it first.",
                "signature": "sig-1",
            }
            assert text == {"type": "text", "text": "Reading the test."}
            assert tool_use["name"] == "Read" and tool_use["input"] == {
                "file_path": "tests/test_calc.py",
                "limit": 50,
            }
            assert sent["messages"][2]["content"][0]["type"] == "tool_result"
            assert sent["messages"][2]["content"][0]["tool_use_id"] == tool_use["id"]
            assert sent["system"] == "You are m2agent."
            assert [t["name"] for t in sent["tools"]] == ["Read"]
        elif style == "completions":
            assert sent["prompt"] == render_prompt(chat_messages(history), TOOLS)
            assert "<think>\nThe test is failing; read it first.\n</think>" in sent["prompt"]
        else:
            assistant = sent["messages"][2]
            if style == "split":
                assert assistant["reasoning_content"] == "The test is failing; read it first."
                assert assistant["content"] == "Reading the test."
            else:
                assert assistant["content"].startswith(
                    "<think>\nThe test is failing; read it first.\n</think>"
                )
            assert assistant["tool_calls"][0]["function"]["name"] == "Read"
            assert sent["tools"] == TOOLS


@pytest.mark.parametrize("fault", ["429", "500", "cut"])
def test_transient_failures_are_retried(fault: str) -> None:
    with FakeM2Server([TURN_2], "split", faults={0: fault}) as server:
        done, events = run_turn(backend_for("split", server.url), [UserMessage("hi")], [])
        assert done.message.content == "The bug is in add()."
        assert any(isinstance(e, Retrying) for e in events)
        assert len(server.requests) == 2


def test_persistent_failure_is_a_backend_error() -> None:
    faults = dict.fromkeys(range(4), "500")
    with (
        FakeM2Server([TURN_2], "split", faults=faults) as server,
        pytest.raises(BackendError, match="failed 4 times"),
    ):
        run_turn(backend_for("split", server.url), [UserMessage("hi")], [])


def test_malformed_and_unknown_tool_calls_are_flagged() -> None:
    with FakeM2Server([TURN_1], "split", faults={0: "bad_args"}) as server:
        turn = run_turn(backend_for("split", server.url), [UserMessage("go")], TOOLS)[0].message
        assert turn.calls[0].call.error is not None and "not valid JSON" in turn.calls[0].call.error
    with FakeM2Server([TURN_1], "raw") as server:
        turn = run_turn(
            backend_for("raw", server.url),
            [UserMessage("go")],
            [TOOLS[0] | {"function": {"name": "Write"}}],
        )[0].message
        assert (
            turn.calls[0].call.error is not None
            and "unknown tool 'Read'" in turn.calls[0].call.error
        )
