"""The Anthropic Messages API of `m2agent serve`, driven by the official `anthropic` SDK
(and raw HTTP for the event order and malformed requests)."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest

from m2agent.engine.server.anthropic_codec import (
    MessageBuilder,
    thinking_signature,
    to_conversation,
)

from .conftest import Server, read_calls

pytestmark = pytest.mark.timeout(300)

TOOLS: Any = [
    {
        "name": "Read",
        "description": "Read a file",
        "input_schema": {
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
            "parameters": TOOLS[0]["input_schema"],
        },
    }
]
SYSTEM = "You are m2agent."
ASK = "Fix the failing test in tests/test_calc.py"
RESULT = "def test_add(): assert add(1, 2) == 4"
GREEDY: dict[str, Any] = {"max_tokens": 24, "extra_body": {"temperature": 0}}


def client(server: Server) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.root, api_key=server.api_key or "none", max_retries=0
    )


def history(thinking: str, text: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": thinking, "signature": "sig"},
                {"type": "text", "text": text},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "Read",
                    "input": {"file_path": "tests/test_calc.py"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": RESULT}],
        },
    ]


def chat_history(reasoning: str, text: str) -> list[dict[str, Any]]:
    call = {
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "Read", "arguments": {"file_path": "tests/test_calc.py"}},
    }
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": text,
            "reasoning_content": reasoning,
            "tool_calls": [call],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": RESULT},
    ]


def tokenize(server: Server, messages: list[dict[str, Any]], tools: Any = CHAT_TOOLS) -> list[int]:
    response = httpx.post(
        f"{server.root}/tokenize", json={"messages": messages, "tools": tools}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["tokens"]


def test_message_with_thinking_block_and_usage(server: Server) -> None:
    message = client(server).messages.create(
        model="tiny-m2", system=SYSTEM, messages=[{"role": "user", "content": ASK}], **GREEDY
    )
    assert message.role == "assistant" and message.model == "tiny-m2"
    assert message.stop_reason in ("end_turn", "max_tokens")
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.thinking
    assert thinking.signature == thinking_signature(thinking.thinking)
    prompt = message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)
    assert prompt == len(tokenize(server, chat_history("", "")[:2], tools=None))
    assert 0 < message.usage.output_tokens <= 24


def test_stream_equals_non_stream_in_anthropic_event_order(server: Server) -> None:
    c = client(server)
    args: dict[str, Any] = {"model": "tiny-m2", "messages": [{"role": "user", "content": ASK}]}
    whole = c.messages.create(**args, **GREEDY)
    with c.messages.stream(**args, **GREEDY) as stream:
        streamed = stream.get_final_message()
    assert [b.model_dump() for b in streamed.content] == [b.model_dump() for b in whole.content]
    assert streamed.stop_reason == whole.stop_reason
    assert streamed.usage.output_tokens == whole.usage.output_tokens

    body = {**args, "max_tokens": 24, "temperature": 0, "stream": True}
    names = []
    with httpx.stream("POST", f"{server.root}/v1/messages", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line[7:])
    assert names[:3] == ["message_start", "ping", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert "content_block_delta" in names


def test_history_renders_exactly_like_chat_and_count_tokens_agrees(server: Server) -> None:
    c = client(server)
    request: Any = {
        "model": "tiny-m2",
        "system": SYSTEM,
        "tools": TOOLS,
        "messages": history("Read it first.", "Reading the test."),
    }
    expected = tokenize(server, chat_history("Read it first.", "Reading the test."))
    assert c.messages.count_tokens(**request).input_tokens == len(expected)
    message = c.messages.create(**request, **GREEDY)
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == len(expected)


def test_thinking_round_trip_hits_the_prefix_cache(server: Server) -> None:
    """Turn 2 sends turn 1's thinking block back: the prompt holds it verbatim and all of turn
    1's prompt comes from the prefix cache."""
    c = client(server)
    first = c.messages.create(
        model="tiny-m2",
        system=SYSTEM,
        tools=TOOLS,
        messages=[{"role": "user", "content": ASK}],
        **GREEDY,
    )
    first_prompt = first.usage.input_tokens + first.usage.cache_read_input_tokens
    thinking = first.content[0]
    assert thinking.type == "thinking"
    messages: Any = history(thinking.thinking, "")
    messages[1]["content"][0] = thinking.model_dump()
    messages[1]["content"].pop(1)  # no text block: the model wrote none
    second = c.messages.create(
        model="tiny-m2", system=SYSTEM, tools=TOOLS, messages=messages, **GREEDY
    )
    expected = tokenize(server, chat_history(thinking.thinking, ""))
    cached = second.usage.cache_read_input_tokens or 0
    assert second.usage.input_tokens + cached == len(expected)
    assert cached >= first_prompt - 16  # all but one partial KV block


def test_stop_sequence_is_named(server: Server) -> None:
    c = client(server)
    args: dict[str, Any] = {"model": "tiny-m2", "messages": [{"role": "user", "content": ASK}]}
    whole = c.messages.create(**args, **GREEDY).content[0]
    assert whole.type == "thinking"
    text = whole.thinking
    visible = [ch for ch in text[3:] if ch.isalnum()]
    if not visible:
        pytest.skip("greedy text has no usable stop string")
    stop = visible[0]
    cut = c.messages.create(**args, stop_sequences=["zzzz-never", stop], **GREEDY)
    assert cut.stop_reason == "stop_sequence"
    assert cut.stop_sequence == stop
    assert cut.content[0].type == "thinking"
    assert cut.content[0].thinking == text[: text.index(stop, 3)]


def test_x_api_key_auth(split_server: Server) -> None:
    with pytest.raises(anthropic.AuthenticationError) as denied:
        anthropic.Anthropic(
            base_url=split_server.root, api_key="wrong", max_retries=0
        ).messages.create(
            model="tiny-m2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert denied.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    ok = client(split_server).messages.create(
        model="tiny-m2", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert ok.usage.output_tokens > 0


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "tiny-m2", "messages": [{"role": "user", "content": "hi"}]}, 400, "max_tokens"),
        (
            {"model": "nope", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
            404,
            "does not exist",
        ),
        ({"model": "tiny-m2", "max_tokens": 2, "messages": []}, 400, "at least one message"),
        (
            {
                "model": "tiny-m2",
                "max_tokens": 2,
                "messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}],
            },
            400,
            "image blocks are not supported",
        ),
        (
            {
                "model": "tiny-m2",
                "max_tokens": 2,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "prefill"},
                ],
            },
            400,
            "prefilled",
        ),
        (
            {
                "model": "tiny-m2",
                "max_tokens": 2,
                "tool_choice": {"type": "any"},
                "messages": [{"role": "user", "content": "hi"}],
            },
            400,
            "needs tools",
        ),
        (
            {
                "model": "tiny-m2",
                "max_tokens": 2,
                "temperature": 1e-300,
                "messages": [{"role": "user", "content": "hi"}],
            },
            400,
            "temperature",
        ),
        (
            {
                "model": "tiny-m2",
                "max_tokens": 2,
                "tools": TOOLS,
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"},
                "messages": [{"role": "user", "content": "hi"}],
            },
            400,
            "disable_parallel_tool_use",
        ),
    ],
)
def test_bad_requests_get_anthropic_errors(
    server: Server, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = httpx.post(f"{server.root}/v1/messages", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["type"] == "error"
    assert fragment in error["error"]["message"]
    assert error["error"]["type"] in ("invalid_request_error", "not_found_error")


def test_unknown_fields_and_server_tools_are_ignored_and_named(server: Server) -> None:
    body = {
        "model": "tiny-m2",
        "max_tokens": 2,
        "messages": [{"role": "user", "content": "hi"}],
        "context_management": {"edits": []},
        "output_config": {"effort": "high"},
        "thinking": {"type": "adaptive"},
        "tools": [*TOOLS, {"type": "web_search_20250305", "name": "web_search"}],
    }
    response = httpx.post(f"{server.root}/v1/messages?beta=true", json=body, timeout=30)
    assert response.status_code == 200, response.text
    ignored = response.headers["x-m2agent-ignored-fields"]
    assert "context_management" in ignored and "output_config" in ignored
    assert "tools[1] (web_search_20250305" in ignored


def test_unknown_route_under_messages_is_an_anthropic_404(server: Server) -> None:
    response = httpx.post(f"{server.root}/v1/messages/batches", json={}, timeout=30)
    assert response.status_code == 404
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "not_found_error"
    assert httpx.head(f"{server.root}/", timeout=30).status_code == 200


def test_forced_tool_choice_calls_the_named_tool(eager_server: Server) -> None:
    message = client(eager_server).messages.create(
        model="tiny-m2",
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "Read"},
        messages=[{"role": "user", "content": ASK}],
        max_tokens=200,
    )
    calls = [b for b in message.content if b.type == "tool_use"]
    assert [c.name for c in calls] == ["Read"]
    assert message.stop_reason == "tool_use"


def test_conversation_folds_text_into_tool_results_in_call_order() -> None:
    """Results go in the order of the calls (M2 matches them by order), and text that comes
    with them joins the last result instead of opening a user turn (which would drop the
    task's reasoning). Claude Code's billing line is left out of the system prompt."""
    calls = [
        {"type": "tool_use", "id": f"toolu_{i}", "name": "Read", "input": {"file_path": str(i)}}
        for i in (1, 2)
    ]
    conversation = to_conversation(
        [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=1;"},
            {"type": "text", "text": "Be brief."},
        ],
        [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "r"}, *calls]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "two"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "one"}],
                    },
                    {"type": "text", "text": "<system-reminder>x</system-reminder>"},
                ],
            },
            {"role": "system", "content": "late context"},
        ],
        TOOLS,
    )
    roles = [m["role"] for m in conversation.messages]
    assert roles == ["system", "user", "assistant", "tool", "tool"]
    assert conversation.messages[0]["content"] == "Be brief."
    assert conversation.messages[2]["reasoning_content"] == "r"
    assert [m["content"] for m in conversation.messages[3:]] == [
        "one",
        "two\n\n<system-reminder>x</system-reminder>\n\nlate context",
    ]
    assert json.dumps(conversation.tools[0]["function"]["parameters"]) == json.dumps(
        TOOLS[0]["input_schema"]
    )


def test_models_answer_both_sdks(server: Server) -> None:
    assert [m.id for m in client(server).models.list().data] == ["tiny-m2"]
    assert client(server).models.retrieve("tiny-m2").display_name == "tiny-m2"
    with pytest.raises(anthropic.NotFoundError):
        client(server).models.retrieve("claude-opus")


def test_disable_parallel_tool_use_keeps_the_first_tool_use() -> None:
    text = read_calls("a.py", "b.py")
    tools = to_conversation(None, [{"role": "user", "content": "hi"}], TOOLS).tools
    single, both = MessageBuilder(tools, True, 1), MessageBuilder(tools, True)
    for builder in (single, both):
        builder.feed(text)
        builder.finish()
    uses = [b["input"] for b in single.blocks if b["type"] == "tool_use"]
    assert uses == [{"file_path": "a.py"}]
    assert len([b for b in both.blocks if b["type"] == "tool_use"]) == 2
