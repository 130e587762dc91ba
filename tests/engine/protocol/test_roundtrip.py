"""Round trips between render_prompt and the parser, over arbitrary strings (hypothesis).

(1) parse(render(turn)) gives back the turn's reasoning, content and arguments.
(2) When the model wrote the canonical layout, render(parse(text)) reproduces the text exactly,
    so an engine's prefix cache can reuse the KV of the model's own output on the next turn.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from m2agent.engine.protocol import OutputParser, parse_output, render_prompt

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "Edit",
            "parameters": {
                "type": "object",
                "properties": {
                    "file_path": {"type": "string"},
                    "new_string": {"type": "string"},
                    "replace_all": {"type": "boolean"},
                    "count": {"type": "integer"},
                    "ratio": {"type": "number"},
                    "todos": {"type": "array"},
                    "options": {"type": "object"},
                    "note": {"type": ["string", "null"]},
                },
            },
        },
    },
    {"type": "function", "function": {"name": "Bash", "parameters": {"type": "object"}}},
]

# Markers whose presence inside a value or text makes the layout ambiguous by construction.
MARKERS = (
    "</think>",
    "<think>",
    "[e~[",
    "<minimax:tool_call>",
    "</minimax:tool_call>",
    "</parameter>",
    "</invoke>",
    "<parameter",
    "<invoke",
)

text_chars = st.text(
    alphabet=st.sampled_from(list("ab <>&\"'\n\t/=é中😀\\[]~!")) | st.characters(), max_size=40
)


def clean(s: str) -> bool:
    return not any(marker in s for marker in MARKERS)


free_text = text_chars.filter(clean)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | free_text,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "ü"]), children, max_size=3)
    ),
    max_leaves=6,
)
edit_arguments = st.fixed_dictionaries(
    {},
    optional={
        "file_path": free_text,
        "new_string": free_text,
        "replace_all": st.booleans(),
        "count": st.integers(-(10**9), 10**9),
        "ratio": st.floats(allow_nan=False, allow_infinity=False),
        "todos": st.lists(json_values, max_size=3),
        "options": st.dictionaries(st.sampled_from(["x", "y"]), json_values, max_size=2),
        # a string that reads as null (any case, as vLLM's parser reads it) is null on the wire
        "note": st.none() | free_text.filter(lambda t: t.strip().lower() != "null"),
    },
)
calls = st.lists(
    st.one_of(
        st.tuples(st.just("Edit"), edit_arguments),
        st.tuples(st.just("Bash"), st.dictionaries(st.sampled_from(["command", "d"]), free_text)),
    ),
    max_size=3,
)
reasoning_text = free_text.filter(lambda s: s != "")


def assistant(reasoning: str, content: str, tool_calls: list[tuple[str, dict]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    message["reasoning_content"] = reasoning
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(tool_calls)
        ]
    return message


def model_text_of(message: dict[str, Any]) -> str:
    """The model's own output for a rendered assistant turn: after the generation prompt,
    up to the end-of-turn marker."""
    prompt = [{"role": "user", "content": "go"}]
    head = render_prompt(prompt, TOOLS)
    whole = render_prompt([*prompt, message], TOOLS, add_generation_prompt=False)
    assert whole.startswith(head) and whole.endswith("[e~[\n")
    return whole[len(head) : -len("[e~[\n")]


@settings(max_examples=300, deadline=None)
@given(reasoning=reasoning_text, content=free_text, tool_calls=calls, data=st.data())
def test_parse_of_render_gives_the_turn_back(
    reasoning: str, content: str, tool_calls: list[tuple[str, dict]], data: st.DataObject
) -> None:
    text = model_text_of(assistant(reasoning, content, tool_calls))
    result = parse_output(text, TOOLS)
    assert result.reasoning == reasoning
    assert result.content == content
    assert [(c.name, c.arguments) for c in result.tool_calls] == tool_calls
    assert all(c.is_valid for c in result.tool_calls)

    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=8)))
    parser = OutputParser(TOOLS)
    start = 0
    for cut in [*cuts, len(text)]:
        parser.feed(text[start:cut])
        start = cut
    assert parser.finish() == result


def canonical_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@settings(max_examples=300, deadline=None)
@given(reasoning=reasoning_text, content=free_text, tool_calls=calls)
def test_render_of_parse_reproduces_canonical_model_text(
    reasoning: str, content: str, tool_calls: list[tuple[str, dict]]
) -> None:
    # Written by hand in the layout the model was trained on (shared/M2_FORMAT.md §2).
    text = f"{reasoning}\n</think>\n\n{content}"
    if tool_calls:
        text += "\n<minimax:tool_call>\n"
        for name, arguments in tool_calls:
            text += f'<invoke name="{name}">\n'
            for key, value in arguments.items():
                text += f'<parameter name="{key}">{canonical_value(value)}</parameter>\n'
            text += "</invoke>\n"
        text += "</minimax:tool_call>"
    message = parse_output(text, TOOLS).to_message()
    assert model_text_of(message) == text
