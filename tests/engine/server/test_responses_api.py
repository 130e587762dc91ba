"""The OpenAI Responses API of `m2agent serve`, driven by the official openai SDK's
`client.responses` (and raw HTTP for malformed requests)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from m2agent.engine.engine import RequestDelta
from m2agent.engine.server.responses_codec import (
    ResponseBuilder,
    decrypt_reasoning,
    encrypt_reasoning,
    to_conversation,
)

from .conftest import Server, read_calls

pytestmark = pytest.mark.timeout(300)

TOOLS: Any = [
    {
        "type": "function",
        "name": "Read",
        "description": "Read a file",
        "parameters": {
            "type": "object",
            "properties": {"file_path": {"type": "string"}},
            "required": ["file_path"],
        },
    }
]
CHAT_TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "description": "Read a file",
            "parameters": TOOLS[0]["parameters"],
        },
    }
]
INSTRUCTIONS = "You are m2agent."
ASK = "Fix the failing test in tests/test_calc.py"
RESULT = "def test_add(): assert add(1, 2) == 4"
ENCRYPTED: Any = ["reasoning.encrypted_content"]
GREEDY: dict[str, Any] = {"max_output_tokens": 24, "temperature": 0}


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key or "none", max_retries=0)


def chat_history(reasoning: str) -> list[dict[str, Any]]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "Read", "arguments": '{"file_path": "tests/test_calc.py"}'},
    }
    return [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": "", "reasoning_content": reasoning, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
    ]


def tokenize(server: Server, messages: list[dict[str, Any]], tools: Any = CHAT_TOOLS) -> list[int]:
    body = {"messages": messages, "tools": tools}
    response = httpx.post(f"{server.root}/tokenize", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def test_response_with_reasoning_item(server: Server) -> None:
    response = client(server).responses.create(
        model="tiny-m2", instructions=INSTRUCTIONS, input=ASK, include=ENCRYPTED, **GREEDY
    )
    assert response.object == "response" and response.model == "tiny-m2"
    assert response.status in ("completed", "incomplete")
    reasoning = response.output[0]
    assert reasoning.type == "reasoning"
    assert reasoning.content and reasoning.content[0].text
    assert decrypt_reasoning(reasoning.encrypted_content) == reasoning.content[0].text
    assert response.usage is not None and 0 < response.usage.output_tokens <= 24
    expected = tokenize(server, chat_history("")[:2], tools=None)
    assert response.usage.input_tokens == len(expected)


def test_stream_events_build_the_same_response(server: Server) -> None:
    c = client(server)
    args: dict[str, Any] = {"model": "tiny-m2", "input": ASK, "tools": TOOLS, **GREEDY}
    whole = c.responses.create(**args)
    kinds = []
    final = None
    for event in c.responses.create(**args, stream=True):
        kinds.append(event.type)
        if event.type in ("response.completed", "response.incomplete"):
            final = event.response
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.reasoning_text.delta" in kinds
    assert kinds[-2] == "response.output_item.done"
    assert final is not None and final.status == whole.status
    assert final.output_text == whole.output_text
    assert [i.model_dump(exclude={"id"}) for i in final.output] == [
        i.model_dump(exclude={"id"}) for i in whole.output
    ]
    numbers = []
    with httpx.stream(
        "POST", f"{server.base_url}/responses", json={**args, "stream": True}, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                numbers.append(httpx.Response(200, content=line[6:]).json()["sequence_number"])
    assert numbers == list(range(len(numbers)))


def test_reasoning_round_trip_via_encrypted_content_hits_the_prefix_cache(server: Server) -> None:
    """Turn 2 sends back turn 1's reasoning item (store: false, encrypted content), a
    function call and its output: the prompt holds the reasoning verbatim, and all of turn 1's
    prompt comes from the prefix cache."""
    c = client(server)
    first = c.responses.create(
        model="tiny-m2",
        instructions=INSTRUCTIONS,
        input=ASK,
        tools=TOOLS,
        store=False,
        include=ENCRYPTED,
        **GREEDY,
    )
    assert first.usage is not None
    reasoning = first.output[0]
    assert reasoning.type == "reasoning" and reasoning.content
    text = reasoning.content[0].text
    sent_back = reasoning.model_dump(exclude_none=True)
    sent_back.pop("content")  # as Codex does: only the encrypted content carries the text
    items: Any = [
        {"role": "user", "content": ASK},
        sent_back,
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "Read",
            "arguments": '{"file_path": "tests/test_calc.py"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": RESULT},
    ]
    second = c.responses.create(
        model="tiny-m2",
        instructions=INSTRUCTIONS,
        input=items,
        tools=TOOLS,
        store=False,
        include=ENCRYPTED,
        **GREEDY,
    )
    assert second.usage is not None
    assert second.usage.input_tokens == len(tokenize(server, chat_history(text)))
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first.usage.input_tokens - 16  # all but one partial KV block


def test_other_tool_types_are_declined_one_by_one(server: Server) -> None:
    body = {
        "model": "tiny-m2",
        "input": [
            {"type": "message", "role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        ],
        "tools": [
            *TOOLS,
            {"type": "web_search"},
            {"type": "namespace", "name": "multi_agent_v1", "tools": []},
        ],
        "prompt_cache_key": "abc",
        "client_metadata": {"x": "y"},
        "max_output_tokens": 2,
    }
    response = httpx.post(f"{server.base_url}/responses", json=body, timeout=30)
    assert response.status_code == 200, response.text
    ignored = response.headers["x-m2agent-ignored-fields"]
    assert "tools[1] (web_search" in ignored and "tools[2] (multi_agent_v1" in ignored
    assert "prompt_cache_key" in ignored and "client_metadata" in ignored
    assert [t["name"] for t in response.json()["tools"]] == ["Read"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "tiny-m2"}, "input"),
        ({"model": "tiny-m2", "input": "hi", "previous_response_id": "resp_1"}, "stores no"),
        (
            {"model": "tiny-m2", "input": "hi", "text": {"format": {"type": "json_schema"}}},
            "json_schema",
        ),
        ({"model": "tiny-m2", "input": [{"type": "item_reference", "id": "x"}]}, "item_reference"),
        (
            {
                "model": "tiny-m2",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
            },
            "input_image",
        ),
        ({"model": "tiny-m2", "input": "hi", "tool_choice": "required"}, "needs tools"),
        ({"model": "tiny-m2", "input": "\ud800"}, "surrogate"),
    ],
)
def test_bad_requests_get_openai_errors(
    server: Server, body: dict[str, Any], fragment: str
) -> None:
    content = json.dumps(body)  # ASCII: a lone surrogate travels as its \\ud800 escape
    response = httpx.post(
        f"{server.base_url}/responses",
        content=content,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_required_tool_choice_makes_a_function_call(eager_server: Server) -> None:
    response = client(eager_server).responses.create(
        model="tiny-m2", input=ASK, tools=TOOLS, tool_choice="required", max_output_tokens=200
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) >= 1 and calls[0].name == "Read"
    assert calls[0].call_id.startswith("call_")


def test_input_items_group_into_turns() -> None:
    conversation = to_conversation(
        "Be brief.",
        [
            {"type": "message", "role": "developer", "content": "Use tools."},
            {"role": "user", "content": "go"},
            {
                "type": "reasoning",
                "id": "rs_1",
                "summary": [],
                "encrypted_content": encrypt_reasoning("think ü"),
            },
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Reading."}],
            },
            {"type": "function_call", "call_id": "a", "name": "Read", "arguments": "{}"},
            {"type": "function_call", "call_id": "b", "name": "Read", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "b", "output": "B"},
            {"type": "function_call_output", "call_id": "a", "output": "A"},
            {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "s"}]},
            {"type": "message", "role": "assistant", "content": "Done."},
        ],
        TOOLS,
    )
    messages = conversation.messages
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
    ]
    assert messages[0]["content"] == "Be brief.\n\nUse tools."
    assert messages[2]["reasoning_content"] == "think ü"
    assert messages[2]["content"] == "Reading."
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["a", "b"]
    assert [m["content"] for m in messages[3:5]] == ["A", "B"]  # in call order
    assert messages[5] == {"role": "assistant", "content": "Done.", "reasoning_content": "s"}
    assert decrypt_reasoning("gAAAA-openai-blob") is None


def test_parallel_tool_calls_false_keeps_the_first_function_call() -> None:
    text = read_calls("a.py", "b.py")
    tools = to_conversation(None, "hi", TOOLS).tools
    single = ResponseBuilder(tools, True, False, max_tool_calls=1)
    both = ResponseBuilder(tools, True, False)
    for builder in (single, both):
        builder.feed(RequestDelta("r", [1, 2], text, "stop", 1, 0, 2))
        builder.finish()
    calls = [item for item in single.output if item["type"] == "function_call"]
    assert [json.loads(c["arguments"]) for c in calls] == [{"file_path": "a.py"}]
    assert len([i for i in both.output if i["type"] == "function_call"]) == 2
