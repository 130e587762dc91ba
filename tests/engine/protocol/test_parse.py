"""parse_output and OutputParser: every case of shared/M2_FORMAT.md §2, whole and re-chunked."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from m2agent.engine.protocol import (
    ContentDelta,
    OutputParser,
    ParsedOutput,
    ReasoningDelta,
    ToolCall,
    ToolCallParsed,
    ToolCallStarted,
    parse_output,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {
                    "k": {"type": "string"},
                    "n": {"type": "integer"},
                    "x": {"type": "number"},
                    "b": {"type": "boolean"},
                    "o": {"type": "object"},
                    "a": {"type": "array"},
                    "maybe": {"type": ["integer", "null"]},
                    "either": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
            },
        },
    },
    {"type": "function", "function": {"name": "g", "parameters": {"type": "object"}}},
]


@dataclass
class Case:
    id: str
    text: str
    reasoning: str | None
    content: str
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    invalid: list[int] = field(default_factory=list)
    in_reasoning: bool = True


CANONICAL = (
    "I need f.\n</think>\n\nCalling f.\n<minimax:tool_call>\n"
    '<invoke name="f">\n<parameter name="k">v</parameter>\n</invoke>\n</minimax:tool_call>'
)

CASES = [
    Case("canonical", CANONICAL, "I need f.", "Calling f.", [("f", {"k": "v"})]),
    Case("canonical-with-eos", CANONICAL + "[e~[", "I need f.", "Calling f.", [("f", {"k": "v"})]),
    Case("text-only", "Think.\n</think>\n\nHello **world**\n", "Think.", "Hello **world**\n"),
    Case("no-think-close-is-all-reasoning", "still thinking <b>", "still thinking <b>", ""),
    Case("empty-output", "", "", ""),
    Case("starts-with-think", "<think>\nR\n</think>\n\nC", "R", "C"),
    Case("starts-with-think-no-newline", "<think>R</think>C", "R", "C"),
    Case(
        "parallel-invokes",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">1</parameter>\n'
        '</invoke>\n<invoke name="g">\n<parameter name="z">2</parameter>\n</invoke>\n'
        "</minimax:tool_call>",
        "R",
        "",
        [("f", {"k": "1"}), ("g", {"z": "2"})],
    ),
    Case(
        "several-blocks-and-text-between",
        'R</think>\n\nA\n<minimax:tool_call>\n<invoke name="f">\n</invoke>\n'
        '</minimax:tool_call>\nB\n<minimax:tool_call>\n<invoke name="g">\n</invoke>\n'
        "</minimax:tool_call>\n",
        "R",
        "A\nB",
        [("f", {}), ("g", {})],
    ),
    Case(
        "missing-newlines",
        'R</think>C<minimax:tool_call><invoke name="f"><parameter name="k">v</parameter>'
        "</invoke></minimax:tool_call>",
        "R",
        "C",
        [("f", {"k": "v"})],
    ),
    Case(
        "single-quoted-and-unquoted-names",
        "R</think>\n\n<minimax:tool_call>\n<invoke name='f'>\n<parameter name=k>v</parameter>\n"
        "</invoke>\n<invoke name=g>\n</invoke>\n</minimax:tool_call>",
        "R",
        "",
        [("f", {"k": "v"}), ("g", {})],
    ),
    Case(
        "extra-attributes",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f" extra="x">\n'
        '<parameter name="k" type="string">v</parameter>\n</invoke>\n</minimax:tool_call>',
        "R",
        "",
        [("f", {"k": "v"})],
    ),
    Case(
        "missing-parameter-close",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">one\n'
        '<parameter name="n">2\n</invoke>\n</minimax:tool_call>',
        "R",
        "",
        [("f", {"k": "one", "n": 2})],
    ),
    Case(
        "missing-block-close-at-end",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">v</parameter>\n'
        "</invoke>\n",
        "R",
        "",
        [("f", {"k": "v"})],
    ),
    Case(
        "missing-invoke-and-block-close-at-end",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">v</parameter>',
        "R",
        "",
        [("f", {"k": "v"})],
    ),
    Case(
        "text-after-block",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n</invoke>\n</minimax:tool_call>'
        "\nDone, see above.",
        "R",
        "\nDone, see above.",
        [("f", {})],
    ),
    Case(
        "values-verbatim",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n'
        '<parameter name="k">\n  a < b && "c" \'d\' é 😀\n\n</parameter>\n'
        "</invoke>\n</minimax:tool_call>",
        "R",
        "",
        [("f", {"k": "\n  a < b && \"c\" 'd' é 😀\n\n"})],
    ),
    Case(
        "typed-by-schema",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n'
        '<parameter name="k">{"not": "parsed"}</parameter>\n'
        '<parameter name="n"> 42 </parameter>\n'
        '<parameter name="x">3.5</parameter>\n'
        '<parameter name="b">TRUE</parameter>\n'
        '<parameter name="o">{"a": [1, null]}</parameter>\n'
        '<parameter name="a">[1, "two"]</parameter>\n'
        '<parameter name="maybe">Null</parameter>\n'
        '<parameter name="either">null</parameter>\n'
        '<parameter name="undeclared">7</parameter>\n'
        "</invoke>\n</minimax:tool_call>",
        "R",
        "",
        [
            (
                "f",
                {
                    "k": '{"not": "parsed"}',
                    "n": 42,
                    "x": 3.5,
                    "b": True,
                    "o": {"a": [1, None]},
                    "a": [1, "two"],
                    "maybe": None,
                    "either": None,
                    "undeclared": "7",
                },
            )
        ],
    ),
    Case(
        "values-that-do-not-parse-stay-raw",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n'
        '<parameter name="n">many</parameter>\n<parameter name="b">yes</parameter>\n'
        '<parameter name="o">[1]</parameter>\n<parameter name="x">nan</parameter>\n'
        "</invoke>\n</minimax:tool_call>",
        "R",
        "",
        [("f", {"n": "many", "b": "yes", "o": "[1]", "x": "nan"})],
    ),
    Case(
        "unknown-tool-is-an-invalid-call",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="rm_rf">\n<parameter name="p">/</parameter>'
        '\n</invoke>\n<invoke name="f">\n</invoke>\n</minimax:tool_call>',
        "R",
        "",
        [("rm_rf", {"p": "/"}), ("f", {})],
        invalid=[0],
    ),
    Case(
        "output-cut-inside-a-value-is-invalid",
        'R</think>\n\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">half a fi',
        "R",
        "",
        [("f", {"k": "half a fi"})],
        invalid=[0],
    ),
    Case(
        "invoke-without-name-is-invalid",
        "R</think>\n\n<minimax:tool_call>\n<invoke>\n</invoke>\n</minimax:tool_call>",
        "R",
        "",
        [("", {})],
        invalid=[0],
    ),
    Case(
        "lookalike-tags-stay-text",
        "R <thinking> </think\n</think>\n\n<minimax:tool> a </minimax:tool_cal",
        "R <thinking> </think",
        "<minimax:tool> a </minimax:tool_cal",
    ),
    Case(
        "empty-content-three-newlines",
        'R\n</think>\n\n\n<minimax:tool_call>\n<invoke name="g">\n</invoke>\n</minimax:tool_call>',
        "R",
        "",
        [("g", {})],
    ),
    Case("content-mode-without-think", "just content", None, "just content", in_reasoning=False),
    Case(
        "content-mode-with-appended-think",
        "<think>R\n</think>\n\nC",
        "R",
        "C",
        in_reasoning=False,
    ),
    Case("end-of-turn-ends-everything", "R</think>\n\nC[e~[\n]~b]user\nmore", "R", "C"),
]


def check(result: ParsedOutput, case: Case) -> None:
    assert result.reasoning == case.reasoning
    assert result.content == case.content
    assert [(c.name, c.arguments) for c in result.tool_calls] == case.calls
    assert [i for i, c in enumerate(result.tool_calls) if not c.is_valid] == case.invalid
    for c in result.tool_calls:
        assert (c.error is None) == c.is_valid


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_parse_output(case: Case) -> None:
    check(parse_output(case.text, TOOLS, in_reasoning=case.in_reasoning), case)


def replay(text: str, cuts: list[int], in_reasoning: bool) -> tuple[ParsedOutput, list[Any]]:
    parser = OutputParser(TOOLS, in_reasoning=in_reasoning)
    events: list[Any] = []
    start = 0
    for cut in [*cuts, len(text)]:
        events += parser.feed(text[start:cut])
        start = cut
    result = parser.finish()
    events += parser.flush_events()
    return result, events


def assert_events_agree(result: ParsedOutput, events: list[Any]) -> None:
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert reasoning == (result.reasoning or "")
    assert content == result.content
    started = [(e.index, e.name) for e in events if isinstance(e, ToolCallStarted)]
    parsed = [(e.index, e.call) for e in events if isinstance(e, ToolCallParsed)]
    assert parsed == list(enumerate(result.tool_calls))
    assert [name for _, name in started] == [c.name for c in result.tool_calls]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_streaming_equals_whole_for_every_chunking(case: Case) -> None:
    whole = parse_output(case.text, TOOLS, in_reasoning=case.in_reasoning)
    rng = random.Random(case.id)
    chunkings = [[], list(range(1, len(case.text)))]  # whole, and one character at a time
    for _ in range(60):
        k = rng.randint(1, max(1, len(case.text) // 2))
        chunkings.append(sorted(rng.sample(range(len(case.text) + 1), min(k, len(case.text)))))
    for cuts in chunkings:
        result, events = replay(case.text, cuts, case.in_reasoning)
        assert result == whole, cuts
        assert_events_agree(result, events)


def test_split_tags_never_leak_as_text() -> None:
    parser = OutputParser(TOOLS)
    assert parser.feed("thinking</thi") == [ReasoningDelta("thinking")]
    assert parser.feed("nk>\n\nok\n<minimax:to") == [ContentDelta("ok")]
    events = parser.feed('ol_call>\n<invoke name="f">\n<parameter name="k">v</para')
    assert events == [ToolCallStarted(index=0, name="f")]
    events = parser.feed("meter>\n</invoke>")
    assert events == [ToolCallParsed(index=0, call=ToolCall("f", {"k": "v"}))]
    assert parser.feed("\n</minimax:tool_call>") == []
    assert parser.finish() == ParsedOutput("thinking", "ok", [ToolCall("f", {"k": "v"})])


def test_reasoning_streams_before_the_close_tag() -> None:
    parser = OutputParser()
    assert parser.feed("Let me") == [ReasoningDelta("Let me")]
    assert parser.feed(" look.\n") == [ReasoningDelta(" look.")]
    assert parser.feed("More.") == [ReasoningDelta("\nMore.")]


def test_feed_after_finish_is_an_error() -> None:
    parser = OutputParser()
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


def test_without_tools_any_name_is_valid_and_values_stay_strings() -> None:
    text = 'R</think><minimax:tool_call><invoke name="x"><parameter name="n">1</parameter>'
    result = parse_output(text)
    assert result.tool_calls == [ToolCall("x", {"n": "1"})]


def test_unknown_tool_error_names_the_offered_tools() -> None:
    text = 'R</think><minimax:tool_call><invoke name="nope"></invoke></minimax:tool_call>'
    (call,) = parse_output(text, TOOLS).tool_calls
    assert call.error is not None
    assert "nope" in call.error
    assert "f, g" in call.error


def test_to_message_is_openai_shaped() -> None:
    message = parse_output(CANONICAL, TOOLS).to_message(["call_a"])
    assert message == {
        "role": "assistant",
        "content": "Calling f.",
        "reasoning_content": "I need f.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "f", "arguments": '{"k": "v"}'},
            }
        ],
    }


def test_long_streamed_value_is_linear_enough() -> None:
    # A 200 KB Write streamed a few characters at a time must not rescan the value each time.
    value = "x = 1\n" * 35_000
    text = f'R</think><minimax:tool_call><invoke name="g"><parameter name="c">{value}</parameter>'
    parser = OutputParser(TOOLS)
    for i in range(0, len(text), 3):
        parser.feed(text[i : i + 3])
    assert parser.finish().tool_calls[0].arguments == {"c": value}


def test_tool_call_parsing_can_be_switched_off() -> None:
    text = 'R</think>\n\nA\n<minimax:tool_call>\n<invoke name="f">\n</invoke>\n</minimax:tool_call>'
    result = parse_output(text, TOOLS, parse_tool_calls=False)
    assert result.tool_calls == []
    assert (
        result.content
        == 'A\n<minimax:tool_call>\n<invoke name="f">\n</invoke>\n</minimax:tool_call>'
    )


TWO_CALLS = (
    "Two at once.\n</think>\n\n<minimax:tool_call>\n"
    '<invoke name="f">\n<parameter name="k">first</parameter>\n</invoke>\n'
    '<invoke name="g">\n<parameter name="k">second</parameter>\n</invoke>\n'
    '<invoke name="f">\n<parameter name="k">third</parameter>\n</invoke>\n'
    "</minimax:tool_call>"
)


@pytest.mark.parametrize("size", [1, 5, len(TWO_CALLS)])
def test_max_tool_calls_keeps_only_the_first(size: int) -> None:
    """A client that asked for no parallel calls gets the first call only, streamed or whole,
    with no start event for the dropped ones."""
    parser = OutputParser(TOOLS, max_tool_calls=1)
    events = [
        e for i in range(0, len(TWO_CALLS), size) for e in parser.feed(TWO_CALLS[i : i + size])
    ]
    result = parser.finish()
    events += parser.flush_events()
    assert [(c.name, c.arguments) for c in result.tool_calls] == [("f", {"k": "first"})]
    calls = [e for e in events if isinstance(e, ToolCallStarted | ToolCallParsed)]
    assert [(type(e).__name__, e.index) for e in calls] == [
        ("ToolCallStarted", 0),
        ("ToolCallParsed", 0),
    ]
    assert result.content == ""
    assert len(parse_output(TWO_CALLS, TOOLS).tool_calls) == 3
