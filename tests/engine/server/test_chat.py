"""Chat translation: model text (whole or streamed) -> OpenAI message and deltas."""

from __future__ import annotations

import json

import pytest

from m2agent.engine.server.chat import ChatTranslator, ReasoningMode, normalize_messages
from m2agent.engine.server.openai_api import APIError

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Bash",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}, "timeout": {"type": "integer"}},
            },
        },
    }
]
OUTPUT = (
    "I will run the tests.\n</think>\n\nRunning them.\n<minimax:tool_call>\n"
    '<invoke name="Bash">\n<parameter name="command">pytest -q</parameter>\n'
    '<parameter name="timeout">60</parameter>\n</invoke>\n</minimax:tool_call>'
)


def translate(
    mode: ReasoningMode, chunks: list[str], parse_tools: bool = True
) -> tuple[list, dict]:
    translator = ChatTranslator(TOOLS, parse_tools, mode)
    deltas = [d for chunk in chunks for d in translator.feed(chunk)]
    deltas += translator.finish()
    return deltas, translator.message()


@pytest.mark.parametrize("size", [1, 3, 7, len(OUTPUT)])
def test_append_think_mode(size: int) -> None:
    chunks = [OUTPUT[i : i + size] for i in range(0, len(OUTPUT), size)]
    deltas, message = translate("append_think", chunks)
    assert message["content"] == "<think>\nI will run the tests.\n</think>\n\nRunning them."
    assert "".join(d.get("content", "") for d in deltas) == message["content"]
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "Bash"
    assert json.loads(call["function"]["arguments"]) == {"command": "pytest -q", "timeout": 60}
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [(t["index"], t["id"]) for t in tool_deltas] == [(0, call["id"])]
    assert "reasoning_content" not in message


def test_split_mode() -> None:
    deltas, message = translate("split", [OUTPUT])
    assert message["reasoning_content"] == "I will run the tests."
    assert message["content"] == "Running them."
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "I will run the tests."


def test_tool_parsing_off_keeps_the_xml_as_content() -> None:
    _, message = translate("split", [OUTPUT], parse_tools=False)
    assert "tool_calls" not in message
    assert message["content"].startswith("Running them.\n<minimax:tool_call>")


def test_only_tool_calls_gives_null_content() -> None:
    text = 'R</think>\n\n<minimax:tool_call>\n<invoke name="Bash">\n</invoke>\n</minimax:tool_call>'
    _, message = translate("split", [text])
    assert message["content"] is None and len(message["tool_calls"]) == 1


def test_history_normalization() -> None:
    messages = normalize_messages(
        [
            {"role": "developer", "content": "rules"},
            {"role": "assistant", "content": "x", "reasoning": "r1"},
            {
                "role": "assistant",
                "content": "y",
                "reasoning_details": [{"type": "reasoning.text", "text": "r2"}],
            },
        ]
    )
    assert messages[0]["role"] == "system"
    assert messages[1]["reasoning_content"] == "r1"
    assert messages[2]["reasoning_content"] == "r2"
    with pytest.raises(APIError, match="role must be one of"):
        normalize_messages([{"role": "bot", "content": "x"}])
    with pytest.raises(APIError, match="non-empty"):
        normalize_messages([])


def test_no_parallel_tool_calls_keeps_the_first_call() -> None:
    second = OUTPUT.replace("pytest -q", "ruff check .").split("<minimax:tool_call>\n")[1]
    two = OUTPUT.replace("</invoke>\n</minimax:tool_call>", "</invoke>\n" + second)
    assert two.count("<invoke") == 2
    translator = ChatTranslator(TOOLS, True, "split", max_tool_calls=1)
    deltas = translator.feed(two) + translator.finish()
    (call,) = translator.message()["tool_calls"]
    assert json.loads(call["function"]["arguments"])["command"] == "pytest -q"
    assert sum(len(d.get("tool_calls", [])) for d in deltas) == 1
    both = ChatTranslator(TOOLS, True, "split")
    both.feed(two)
    both.finish()
    assert len(both.message()["tool_calls"]) == 2
