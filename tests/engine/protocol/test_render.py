"""render_prompt: hand-written expected renderings, one per rule of shared/M2_FORMAT.md §1."""

from __future__ import annotations

import pytest

from m2agent.engine.protocol import ProtocolError, render_prompt

DEFAULT_SYSTEM = (
    "]~!b[]~b]system\n"
    "You are MiniMax-M2, a helpful AI assistant built by MiniMax. Knowledge cutoff: 2025-06."
    "[e~[\n"
)
GEN = "]~b]ai\n<think>\n"

READ_TOOL = {
    "type": "function",
    "function": {
        "name": "Read",
        "description": "Read a file. Ünïcode stays as is.",
        "parameters": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["file_path"],
        },
    },
}
TOOLS_BLOCK = (
    "\n\n# Tools\nYou may call one or more tools to assist with the user query.\n"
    "Here are the tools available in JSONSchema format:\n\n<tools>\n"
    '<tool>{"name": "Read", "description": "Read a file. Ünïcode stays as is.", "parameters": '
    '{"type": "object", "properties": {"file_path": {"type": "string"}, "limit": {"type": '
    '"integer"}}, "required": ["file_path"]}}</tool>\n'
    "</tools>\n\nWhen making tool calls, use XML format to invoke tools and pass parameters:\n\n"
    '<minimax:tool_call>\n<invoke name="tool-name-1">\n'
    '<parameter name="param-key-1">param-value-1</parameter>\n'
    '<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n'
    "</minimax:tool_call>"
)


def call(name: str, arguments: object, call_id: str = "call_1") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def test_default_system_and_generation_prompt() -> None:
    got = render_prompt([{"role": "user", "content": "hi"}])
    assert got == DEFAULT_SYSTEM + "]~b]user\nhi[e~[\n" + GEN


def test_without_generation_prompt() -> None:
    got = render_prompt([{"role": "user", "content": "hi"}], add_generation_prompt=False)
    assert got == DEFAULT_SYSTEM + "]~b]user\nhi[e~[\n"


def test_empty_conversation_is_the_system_turn() -> None:
    assert render_prompt([]) == DEFAULT_SYSTEM + GEN


def test_custom_system_with_date_and_location() -> None:
    messages = [
        {
            "role": "system",
            "content": "You are m2agent.",
            "current_date": "2026-11-26",
            "current_location": "Lyon",
        },
        {"role": "user", "content": "hi"},
    ]
    assert render_prompt(messages) == (
        "]~!b[]~b]system\nYou are m2agent.\nCurrent date: 2026-11-26\nCurrent location: Lyon"
        "[e~[\n]~b]user\nhi[e~[\n" + GEN
    )


def test_empty_system_message_gets_default_identity_but_keeps_date() -> None:
    messages = [{"role": "system", "content": "", "current_date": "2026-01-01"}]
    assert render_prompt(messages, add_generation_prompt=False) == (
        "]~!b[]~b]system\nYou are MiniMax-M2, a helpful AI assistant built by MiniMax. "
        "Knowledge cutoff: 2025-06.\nCurrent date: 2026-01-01[e~[\n"
    )


def test_only_first_message_can_be_system() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "b"},
    ]
    assert render_prompt(messages) == (DEFAULT_SYSTEM + "]~b]user\na[e~[\n]~b]user\nb[e~[\n" + GEN)


def test_tools_block() -> None:
    got = render_prompt([{"role": "user", "content": "hi"}], [READ_TOOL])
    assert got == (
        "]~!b[]~b]system\nYou are MiniMax-M2, a helpful AI assistant built by MiniMax. "
        "Knowledge cutoff: 2025-06." + TOOLS_BLOCK + "[e~[\n]~b]user\nhi[e~[\n" + GEN
    )


def test_empty_tool_list_renders_no_tools_block() -> None:
    assert render_prompt([{"role": "user", "content": "hi"}], []) == render_prompt(
        [{"role": "user", "content": "hi"}]
    )


def test_content_parts_concatenate_text_and_strings_only() -> None:
    content = [
        {"type": "text", "text": "a"},
        {"type": "image_url", "image_url": {"url": "x"}},
        "b",
        {"type": "text", "text": "\nc"},
    ]
    got = render_prompt([{"role": "user", "content": content}], add_generation_prompt=False)
    assert got == DEFAULT_SYSTEM + "]~b]user\nab\nc[e~[\n"


def test_none_content_renders_empty() -> None:
    got = render_prompt([{"role": "user", "content": None}], add_generation_prompt=False)
    assert got == DEFAULT_SYSTEM + "]~b]user\n[e~[\n"


def test_reasoning_kept_only_after_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1", "reasoning_content": "old thoughts"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2", "reasoning_content": "new thoughts"},
    ]
    assert render_prompt(messages, add_generation_prompt=False) == (
        DEFAULT_SYSTEM
        + "]~b]user\nq1[e~[\n]~b]ai\na1[e~[\n]~b]user\nq2[e~[\n"
        + "]~b]ai\n<think>\nnew thoughts\n</think>\n\na2[e~[\n"
    )


def test_reasoning_content_is_verbatim() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "\nA\n", "reasoning_content": "\nR\n\n"},
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith(
        "]~b]ai\n<think>\n\nR\n\n\n</think>\n\n\nA\n[e~[\n"
    )


def test_empty_reasoning_writes_no_think_block() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "reasoning_content": ""},
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith("]~b]ai\na[e~[\n")


def test_reasoning_extracted_from_think_in_content() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "<think>\n\nthinking\n</think>\n\nanswer\n\n"},
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith(
        "]~b]ai\n<think>\nthinking\n</think>\n\nanswer[e~[\n"
    )


def test_reasoning_extraction_without_open_tag_and_several_closes() -> None:
    # reasoning: before the first </think>; content: after the last one.
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "first\n</think>middle</think>\nlast"},
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith(
        "]~b]ai\n<think>\nfirst\n</think>\n\nlast[e~[\n"
    )


def test_reasoning_content_field_wins_and_content_is_left_alone() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "x</think>y", "reasoning_content": "R"},
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith(
        "]~b]ai\n<think>\nR\n</think>\n\nx</think>y[e~[\n"
    )


def test_think_in_content_before_last_user_is_dropped() -> None:
    messages = [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "<think>old</think>\n\nanswer"},
        {"role": "user", "content": "q2"},
    ]
    assert "]~b]ai\nanswer[e~[\n" in render_prompt(messages)


def test_tool_calls_raw_strings_and_json_values() -> None:
    arguments = {
        "s": 'a<b & "c"\n',
        "t": True,
        "n": None,
        "f": 2.5,
        "i": 3,
        "l": [1, 2],
        "o": {"a": 1, "é": "ü"},
    }
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call("f", arguments)]},
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith(
        ']~b]ai\n\n<minimax:tool_call>\n<invoke name="f">\n'
        '<parameter name="s">a<b & "c"\n</parameter>\n'
        '<parameter name="t">true</parameter>\n'
        '<parameter name="n">null</parameter>\n'
        '<parameter name="f">2.5</parameter>\n'
        '<parameter name="i">3</parameter>\n'
        '<parameter name="l">[1, 2]</parameter>\n'
        '<parameter name="o">{"a": 1, "é": "ü"}</parameter>\n'
        "</invoke>\n</minimax:tool_call>[e~[\n"
    )


def test_arguments_as_json_string_equal_arguments_as_dict() -> None:
    def render(arguments: object) -> str:
        messages = [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "x", "tool_calls": [call("f", arguments)]},
        ]
        return render_prompt(messages)

    assert render('{"a": "1", "b": 1}') == render({"a": "1", "b": 1})


def test_parallel_calls_with_reasoning_three_newlines() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "reasoning_content": "R",
            "tool_calls": [call("a", {"x": "1"}), call("b", {}, "call_2")],
        },
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith(
        "]~b]ai\n<think>\nR\n</think>\n\n\n<minimax:tool_call>\n"
        '<invoke name="a">\n<parameter name="x">1</parameter>\n</invoke>\n'
        '<invoke name="b">\n</invoke>\n'
        "</minimax:tool_call>[e~[\n"
    )


def test_grouped_tool_results() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [call("a", {}), call("b", {}, "call_2")],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "one"},
        {"role": "tool", "tool_call_id": "call_2", "content": "two\n"},
        {"role": "user", "content": "next"},
    ]
    assert (
        "]~b]tool\n<response>one</response>\n<response>two\n</response>[e~[\n]~b]user\nnext"
        in render_prompt(messages)
    )


def test_list_tool_content_renders_each_item() -> None:
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [call("a", {})]},
        {"role": "tool", "content": [{"type": "text", "text": "x"}, "y", {"output": "z"}]},
    ]
    assert render_prompt(messages, add_generation_prompt=False).endswith(
        "]~b]tool\n<response>x\n</response>\n<response>y\n</response>\n<response>z\n</response>"
        "[e~[\n"
    )


def test_the_example_of_the_spec() -> None:
    messages = [
        {"role": "system", "content": "You are m2agent."},
        {"role": "user", "content": "Fix the test"},
        {
            "role": "assistant",
            "content": "Reading.",
            "reasoning_content": "Read it first.",
            "tool_calls": [call("Read", '{"file_path": "tests/test_calc.py"}')],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "def test_add(): ..."},
    ]
    assert render_prompt(messages) == (
        "]~!b[]~b]system\nYou are m2agent.[e~[\n]~b]user\nFix the test[e~[\n]~b]ai\n<think>\n"
        'Read it first.\n</think>\n\nReading.\n<minimax:tool_call>\n<invoke name="Read">\n'
        '<parameter name="file_path">tests/test_calc.py</parameter>\n</invoke>\n'
        "</minimax:tool_call>[e~[\n]~b]tool\n<response>def test_add(): ...</response>[e~[\n"
        "]~b]ai\n<think>\n"
    )


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        ([{"role": "tool", "content": "x"}], "no earlier assistant message made a tool call"),
        (
            [
                {"role": "assistant", "content": "no calls"},
                {"role": "tool", "content": "x"},
            ],
            "no earlier assistant message made a tool call",
        ),
        (
            [{"role": "assistant", "tool_calls": [call("f", "{not json")]}],
            "arguments is not valid JSON",
        ),
        ([{"role": "assistant", "tool_calls": [call("f", "[1]")]}], "must be a JSON object"),
        ([{"role": "assistant", "tool_calls": [call("", {})]}], "non-empty string 'name'"),
        ([{"role": "user", "content": 5}], "content must be a string"),
        (["not a dict"], "messages[0] must be an object"),
    ],
)
def test_bad_messages_raise_a_clear_error(messages: list, error: str) -> None:
    with pytest.raises(ProtocolError, match=error.replace("[", r"\[").replace("]", r"\]")):
        render_prompt(messages)


def test_bad_tool_raises_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match=r"tools\[0\]"):
        render_prompt([], [{"type": "function"}])
