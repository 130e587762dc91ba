"""`m2agent serve` driven by the official openai SDK (and raw HTTP for malformed requests)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from m2agent.engine.protocol import render_prompt
from m2agent.engine.tokenizer import Tokenizer

from .conftest import Server

pytestmark = pytest.mark.timeout(300)

MESSAGES: Any = [
    {"role": "system", "content": "You are m2agent."},
    {"role": "user", "content": "Fix the failing test in tests/test_calc.py"},
]
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "Read",
            "description": "Read a file",
            "parameters": {
                "type": "object",
                "properties": {"file_path": {"type": "string"}},
                "required": ["file_path"],
            },
        },
    }
]
HISTORY: Any = [
    *MESSAGES,
    {
        "role": "assistant",
        "content": "Reading the test.",
        "reasoning_content": "Read it first.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "Read", "arguments": '{"file_path": "tests/test_calc.py"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "def test_add(): assert add(1, 2) == 4"},
]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 24}


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=server.api_key or "none", max_retries=0)


def test_models(server: Server) -> None:
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tiny-m2"]


def test_chat_non_stream(server: Server, tok: Tokenizer) -> None:
    response = client(server).chat.completions.create(model="tiny-m2", messages=MESSAGES, **GREEDY)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content.startswith("<think>")
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert response.usage.completion_tokens > 0
    prompt = render_prompt(MESSAGES)
    assert response.usage.prompt_tokens == len(tok.encode(prompt))


@pytest.fixture(scope="module")
def tok(server_checkpoint: Path) -> Tokenizer:
    return Tokenizer.from_dir(server_checkpoint)


def auth(server: Server) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}


def test_stream_equals_non_stream(server: Server) -> None:
    c = client(server)
    whole = c.chat.completions.create(model="tiny-m2", messages=MESSAGES, **GREEDY)
    stream = c.chat.completions.create(
        model="tiny-m2",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_tools_and_reasoning_in_history_every_form(server: Server, tok: Tokenizer) -> None:
    c = client(server)
    expected = tok.encode(render_prompt(HISTORY, TOOLS))
    variants = []
    as_reasoning = json.loads(json.dumps(HISTORY))
    as_reasoning[2]["reasoning"] = as_reasoning[2].pop("reasoning_content")
    variants.append(as_reasoning)
    in_content = json.loads(json.dumps(HISTORY))
    in_content[2]["content"] = "<think>\nRead it first.\n</think>\n\nReading the test."
    del in_content[2]["reasoning_content"]
    variants.append(in_content)
    dict_args = json.loads(json.dumps(HISTORY))
    dict_args[2]["tool_calls"][0]["function"]["arguments"] = {"file_path": "tests/test_calc.py"}
    variants.append(dict_args)
    for messages in [HISTORY, *variants]:
        tokens = httpx.post(
            f"{server.root}/tokenize",
            json={"messages": messages, "tools": TOOLS},
            headers=auth(server),
        ).json()["tokens"]
        assert tokens == expected
    response = c.chat.completions.create(model="tiny-m2", messages=HISTORY, tools=TOOLS, **GREEDY)
    assert response.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert response.usage.prompt_tokens == len(expected)


def test_prefix_cache_is_reported_in_usage(server: Server) -> None:
    c = client(server)
    c.chat.completions.create(model="tiny-m2", messages=HISTORY, tools=TOOLS, **GREEDY)
    again = c.chat.completions.create(model="tiny-m2", messages=HISTORY, tools=TOOLS, **GREEDY)
    details = again.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens >= again.usage.prompt_tokens - 16


def test_completions(server: Server, tok: Tokenizer) -> None:
    c = client(server)
    prompt = render_prompt(MESSAGES)
    whole = c.completions.create(model="tiny-m2", prompt=prompt, **GREEDY)
    assert whole.choices[0].finish_reason in ("stop", "length")
    ids = tok.encode(prompt)
    by_ids = c.completions.create(model="tiny-m2", prompt=ids, **GREEDY)
    assert by_ids.choices[0].text == whole.choices[0].text
    stream = c.completions.create(
        model="tiny-m2",
        prompt=prompt,
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    text, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        text += "".join(choice.text for choice in chunk.choices)
    assert text == whole.choices[0].text
    assert usage is not None and usage.prompt_tokens == len(ids)


def test_stop_sequences(server: Server) -> None:
    c = client(server)
    whole = c.completions.create(model="tiny-m2", prompt="def add(a, b):", **GREEDY).choices[0].text
    visible = [ch for ch in whole[2:] if ch.isalnum()]
    if not visible:
        pytest.skip("greedy text has no usable stop string")
    stop = visible[0]
    cut = c.completions.create(model="tiny-m2", prompt="def add(a, b):", stop=[stop], **GREEDY)
    assert cut.choices[0].text == whole[: whole.index(stop, 0)]
    assert cut.choices[0].finish_reason == "stop"


def test_eight_concurrent_streams(server: Server) -> None:
    c = client(server)
    prompts = [f"]~!b[]~b]user\nTask number {i}[e~[\n]~b]ai\n<think>\n" for i in range(8)]
    alone = [
        c.completions.create(model="tiny-m2", prompt=p, **GREEDY).choices[0].text for p in prompts
    ]
    results: list[str | None] = [None] * 8
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            stream = client(server).completions.create(
                model="tiny-m2", prompt=prompts[i], stream=True, **GREEDY
            )
            results[i] = "".join(ch.text for chunk in stream for ch in chunk.choices)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert results == alone


def test_disconnect_mid_stream_aborts_the_request(server: Server) -> None:
    before = httpx.get(f"{server.root}/health").json()["requests_aborted"]
    body = {
        "model": "tiny-m2",
        "prompt": "]~!b[]~b]user\nwrite a lot[e~[\n]~b]ai\n<think>\n",
        "max_tokens": 900,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.base_url}/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = httpx.get(f"{server.root}/health").json()
        if health["requests_aborted"] > before and health["requests_in_flight"] == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"the request was not aborted: {health}")


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"model": "tiny-m2"}, 400, "messages"),
        ({"model": "tiny-m2", "messages": MESSAGES, "max_tokens": -5}, 400, "max_tokens"),
        ({"model": "tiny-m2", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        ({"model": "nope", "messages": MESSAGES}, 404, "does not exist"),
        ({"model": "tiny-m2", "messages": MESSAGES, "n": 2}, 400, "n=1"),
        ({"model": "tiny-m2", "messages": MESSAGES, "logprobs": True}, 400, "logprobs"),
        ({"model": "tiny-m2", "messages": MESSAGES, "tool_choice": "required"}, 400, "tools"),
        ({"model": "tiny-m2", "messages": MESSAGES, "temperature": -1}, 400, "temperature"),
        (
            {"model": "tiny-m2", "messages": [{"role": "user", "content": "word " * 1500}]},
            400,
            "context",
        ),
        ({"model": "tiny-m2", "messages": MESSAGES, "max_tokens": 5000}, 400, "max_tokens"),
        (
            {"model": "tiny-m2", "messages": [{"role": "tool", "content": "orphan"}]},
            400,
            "no earlier assistant message made a tool call",
        ),
    ],
)
def test_bad_requests_get_4xx_and_the_server_keeps_serving(
    server: Server, body: dict, status: int, fragment: str
) -> None:
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"]
    ok = client(server).chat.completions.create(model="tiny-m2", messages=MESSAGES, max_tokens=2)
    assert ok.choices[0].message is not None


def test_invalid_json_body(server: Server) -> None:
    response = httpx.post(
        f"{server.base_url}/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_split_reasoning_and_api_key(split_server: Server) -> None:
    denied = httpx.post(
        f"{split_server.base_url}/chat/completions",
        json={"model": "tiny-m2", "messages": MESSAGES},
    )
    assert denied.status_code == 401
    assert denied.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{split_server.root}/health").status_code == 200  # health stays open
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=split_server.base_url, api_key="wrong", max_retries=0).models.list()
    response = client(split_server).chat.completions.create(
        model="tiny-m2", messages=MESSAGES, max_tokens=40, temperature=0
    )
    message = response.choices[0].message
    extra = message.model_extra or {}
    assert "reasoning_content" in extra
    assert not (message.content or "").startswith("<think>")


def test_idle_exit(server_checkpoint: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "m2agent",
            "serve",
            "--model",
            str(server_checkpoint),
            "--device",
            "cpu",
            "--port",
            "0",
            "--log-file",
            str(tmp_path / "log"),
            "--idle-exit-s",
            "1.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    assert "at http://127.0.0.1:" in process.stdout.readline()
    assert process.wait(timeout=60) == 0
    assert "idle for" in (tmp_path / "log").read_text()


@pytest.mark.parametrize(
    "tool_choice", ["required", {"type": "function", "function": {"name": "Read"}}]
)
def test_tool_choice_forces_a_call(eager_server: Server, tool_choice: Any) -> None:
    """The reasoning runs free, then the output continues from the opening of a tool call."""
    response = client(eager_server).chat.completions.create(
        model="tiny-m2", messages=MESSAGES, tools=TOOLS, tool_choice=tool_choice, max_tokens=200
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert [call.function.name for call in choice.message.tool_calls] == ["Read"]  # type: ignore[union-attr]


def test_unknown_fields_are_ignored_and_named(server: Server) -> None:
    body = {
        "model": "tiny-m2",
        "messages": MESSAGES,
        "max_tokens": 2,
        "frobnicate": 1,
        "stream_options": {"include_usage": True, "future": 1},
        "stream": False,
    }
    response = httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-m2agent-ignored-fields"] == "frobnicate, stream_options.future"
