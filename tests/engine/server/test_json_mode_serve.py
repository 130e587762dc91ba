"""JSON mode end to end: a real `m2agent serve` on the tiny random checkpoint, asked through the
official openai SDK. Random weights write random tokens, so only the constraint can make the
content one JSON object."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from .conftest import Server

MESSAGES: Any = [{"role": "user", "content": "Give me a JSON object describing a cat."}]
JSON_MODE: Any = {"type": "json_object"}


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key or "none", max_retries=0)


@pytest.mark.parametrize(("max_tokens", "seed"), [(3, 0), (24, 1), (60, 2), (200, 2)])
def test_chat_json_object_parses(server: Server, max_tokens: int, seed: int) -> None:
    response = client(server).chat.completions.create(
        model="tiny-m2",
        messages=MESSAGES,
        response_format=JSON_MODE,
        max_tokens=max_tokens,
        seed=seed,
        temperature=1.0,
    )
    choice = response.choices[0]
    assert choice.message.content is not None
    assert isinstance(json.loads(choice.message.content), dict), choice.message.content
    assert choice.finish_reason == "stop"  # the object's end ended the answer
    assert response.usage is not None and response.usage.completion_tokens <= max_tokens
    # the reasoning is split out even on this append_think server: content is the object alone
    assert "<think>" not in choice.message.content


def test_chat_json_object_streamed(server: Server) -> None:
    stream = client(server).chat.completions.create(
        model="tiny-m2",
        messages=MESSAGES,
        response_format=JSON_MODE,
        max_tokens=40,
        seed=7,
        stream=True,
    )
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert isinstance(json.loads("".join(pieces)), dict), pieces
    assert finish == "stop"


def test_without_response_format_nothing_changes(server: Server) -> None:
    c = client(server)
    plain = c.chat.completions.create(
        model="tiny-m2", messages=MESSAGES, max_tokens=12, temperature=0
    )
    text = c.chat.completions.create(
        model="tiny-m2",
        messages=MESSAGES,
        max_tokens=12,
        temperature=0,
        response_format={"type": "text"},
    )
    assert plain.choices[0].message.content == text.choices[0].message.content
    assert (plain.choices[0].message.content or "").startswith("<think>")
    assert plain.usage is not None and plain.usage.completion_tokens == 12


def test_responses_json_object(server: Server) -> None:
    response = client(server).responses.create(
        model="tiny-m2",
        input="Describe a cat as JSON.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=30,
    )
    assert isinstance(json.loads(response.output_text), dict), response.output_text
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_object"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "json_object",
        ),
        ({"response_format": JSON_MODE, "max_tokens": 2}, "at least 3"),
        (
            {
                "response_format": JSON_MODE,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "tool_choice": "required",
            },
            "required tool call",
        ),
    ],
)
def test_refusals(server: Server, body: dict[str, Any], expected: str) -> None:
    reply = httpx.post(
        f"{server.base_url}/chat/completions",
        json={"model": "tiny-m2", "messages": MESSAGES, **body},
        timeout=30,
    )
    assert reply.status_code == 400, reply.text
    assert expected in reply.json()["error"]["message"]
