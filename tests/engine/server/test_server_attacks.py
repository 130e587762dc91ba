"""Attacks on `m2agent serve` (issue 13, findings 14-17, and issue 16's disconnect bug): each
test sends what a hostile or careless client would and checks the server answers with a clear
4xx in the API's error shape, keeps serving, and shuts down on time.

Threat model: any local process (or, with --host, any host) can reach the port. It must not be
able to kill the engine, stall other clients, exhaust memory with one body, or read the API key
from `ps`; a client that leaves must not leave its generation running."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from m2agent.engine.engine import RequestDelta
from m2agent.engine.errors import EngineError
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.server.__main__ import API_KEY_ENV, resolve_api_key
from m2agent.engine.server.async_bridge import AsyncEngine

from .conftest import Server, _serve, start_server

pytestmark = pytest.mark.timeout(300)

HI = [{"role": "user", "content": "hi"}]


def post(server: Server, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.root}{path}", json=body, timeout=60, **kwargs)


def assert_openai_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def assert_alive(server: Server) -> None:
    assert httpx.get(f"{server.root}/health", timeout=10).status_code == 200
    ok = post(server, "/v1/chat/completions", {"model": "tiny-m2", "messages": HI, "max_tokens": 2})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("seed", [2**64, -1, 10**30])
def test_seed_out_of_range_is_a_400_and_the_engine_lives(server: Server, seed: int) -> None:
    body = {"model": "tiny-m2", "messages": HI, "max_tokens": 2, "seed": seed}
    assert_openai_error(post(server, "/v1/chat/completions", body), 400, "seed")
    body = {"model": "tiny-m2", "prompt": "hi", "max_tokens": 2, "seed": seed}
    assert_openai_error(post(server, "/v1/completions", body), 400, "seed")
    assert_alive(server)


class _EngineThatFailsOneRequest:
    """The part of LLMEngine the bridge drives; adding request "bad" raises a non-engine error
    (as an unvalidated seed once did inside torch)."""

    def __init__(self) -> None:
        self.waiting: list[str] = []

    def add_request(self, request_id: str, prompt_ids: list[int], params: Any) -> int:
        if request_id == "bad":
            raise OverflowError("int too big to convert")
        self.waiting.append(request_id)
        return len(prompt_ids)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def step(self) -> list[RequestDelta]:
        done, self.waiting = self.waiting, []
        return [RequestDelta(r, [1], "x", "stop", 1, 0, 1) for r in done]

    def abort(self, request_id: str) -> bool:
        return False


def test_an_error_adding_one_request_fails_that_request_only() -> None:
    bridge = AsyncEngine(_EngineThatFailsOneRequest())

    async def texts(request_id: str) -> list[str]:
        return [d.text async for d in bridge.generate(request_id, [1], SamplingParams())]

    bridge.start()
    try:
        with pytest.raises(EngineError, match="could not start"):
            asyncio.run(texts("bad"))
        assert asyncio.run(texts("good")) == ["x"]
        assert bridge.is_alive
    finally:
        bridge.stop(timeout_s=5)
    assert not bridge.is_alive
    with pytest.raises(EngineError, match="shutting down"):  # a stopped bridge fails fast
        asyncio.run(texts("late"))


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        ("/v1/chat/completions", {"temperature": 1e-300}, "temperature"),
        ("/v1/chat/completions", {"top_p": 1e-300}, "top_p"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "\ud800"}]},
            "surrogate",
        ),
        ("/v1/completions", {"prompt": "a\udfffb"}, "surrogate"),
        ("/v1/completions", {"prompt": ""}, "must not be empty"),
        ("/tokenize", {"prompt": "\ud800"}, "surrogate"),
    ],
)
def test_edge_values_are_400s_not_500s(server: Server, path: str, body: Any, fragment: str) -> None:
    base = {"model": "tiny-m2", "max_tokens": 2}
    if path == "/v1/chat/completions":
        base["messages"] = HI
    if path == "/tokenize":
        base = {"model": "tiny-m2"}
    response = httpx.post(
        f"{server.root}{path}",
        content=json.dumps({**base, **body}),  # ASCII: lone surrogates travel escaped
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert_openai_error(response, 400, fragment)
    assert_alive(server)


def test_routes_methods_and_bodies_answer_in_the_openai_shape(server: Server) -> None:
    assert_openai_error(httpx.get(f"{server.root}/v2/nothing"), 404, "no route")
    assert_openai_error(httpx.get(f"{server.base_url}/chat/completions"), 405, "not allowed")
    headers = {"content-type": "application/json"}
    bad_json = httpx.post(f"{server.base_url}/chat/completions", content=b"{no", headers=headers)
    assert_openai_error(bad_json, 400, "not valid JSON")
    deep = b"[" * 200_000 + b"]" * 200_000
    nested = httpx.post(f"{server.base_url}/chat/completions", content=deep, headers=headers)
    assert_openai_error(nested, 400, "nests too deeply")
    not_object = httpx.post(f"{server.base_url}/responses", content=b"[1]", headers=headers)
    assert_openai_error(not_object, 400, "JSON object")
    anthropic_shape = httpx.get(f"{server.root}/v1/messages")
    assert anthropic_shape.status_code == 405
    assert anthropic_shape.json()["type"] == "error"


def test_a_big_prompt_is_tokenized_off_the_event_loop(server: Server) -> None:
    """While one client's multi-megabyte prompt is tokenized, /health still answers at once."""
    # Encoded up front: JSON-encoding 1.2 MB in the thread would hold this process's GIL and
    # slow the polling below, which is not what is measured.
    body = json.dumps({"prompt": "lorem ipsum dolor sit amet " * 45_000}).encode()
    headers = {"content-type": "application/json"}
    done = threading.Event()
    took: list[float] = []

    def tokenize() -> None:
        started = time.monotonic()
        httpx.post(f"{server.root}/tokenize", content=body, headers=headers, timeout=120)
        took.append(time.monotonic() - started)
        done.set()

    threading.Thread(target=tokenize, daemon=True).start()
    time.sleep(0.3)
    slowest = 0.0
    while not done.is_set():
        started = time.monotonic()
        assert httpx.get(f"{server.root}/health", timeout=30).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.05)
    if took[0] < 1.0:
        pytest.skip(f"tokenizing took only {took[0]:.2f}s here: too fast to tell")
    assert slowest < 1.0, f"/health took {slowest:.2f}s while tokenizing for {took[0]:.2f}s"


@pytest.fixture(scope="module")
def guarded_server(
    server_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    key_file = tmp_path_factory.mktemp("key") / "key"
    key_file.write_text("file-sekrit\n")
    tmp = tmp_path_factory.mktemp("log")
    for server in _serve(
        server_checkpoint, tmp, "--max-request-bytes", "65536", "--api-key-file", str(key_file)
    ):
        yield Server(server.base_url, server.root, server.model, "file-sekrit", server.log)


def test_bodies_over_the_limit_are_413_before_they_are_read(guarded_server: Server) -> None:
    auth = {"Authorization": "Bearer file-sekrit"}
    big = {"model": "tiny-m2", "messages": [{"role": "user", "content": "x" * 100_000}]}
    response = post(guarded_server, "/v1/chat/completions", big, headers=auth)
    assert_openai_error(response, 413, "--max-request-bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"model": "tiny-m2", "prompt": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}'

    streamed = httpx.post(
        f"{guarded_server.base_url}/completions",
        content=chunks(),
        headers={**auth, "content-type": "application/json"},
        timeout=60,
    )
    assert_openai_error(streamed, 413, "--max-request-bytes")
    anthropic = post(guarded_server, "/v1/messages", big, headers={"x-api-key": "file-sekrit"})
    assert anthropic.status_code == 413
    assert anthropic.json()["error"]["type"] == "request_too_large"
    small = {"model": "tiny-m2", "messages": HI, "max_tokens": 2}
    assert post(guarded_server, "/v1/chat/completions", small, headers=auth).status_code == 200


def test_api_key_from_a_file_is_required_and_not_in_ps(guarded_server: Server) -> None:
    small = {"model": "tiny-m2", "messages": HI, "max_tokens": 2}
    assert_openai_error(post(guarded_server, "/v1/chat/completions", small), 401, "API key")
    wrong = post(guarded_server, "/v1/chat/completions", small, headers={"x-api-key": "nope"})
    assert wrong.status_code == 401
    right = post(
        guarded_server, "/v1/chat/completions", small, headers={"x-api-key": "file-sekrit"}
    )
    assert right.status_code == 200
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert b"file-sekrit" not in cmdline.read_bytes()
        except OSError:
            continue


def test_api_key_sources(tmp_path: Path) -> None:
    def args(**given: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"api_key": None, "api_key_file": None, **given})

    key_file = tmp_path / "key"
    key_file.write_text("  from-file \n")
    assert resolve_api_key(args(), {}) is None
    assert resolve_api_key(args(), {API_KEY_ENV: "from-env"}) == "from-env"
    assert resolve_api_key(args(api_key_file=key_file), {}) == "from-file"
    with pytest.raises(ValueError, match="one way only"):
        resolve_api_key(args(api_key="a"), {API_KEY_ENV: "b"})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        resolve_api_key(args(api_key_file=tmp_path / "empty"), {})
    with pytest.raises(ValueError, match="cannot read"):
        resolve_api_key(args(api_key_file=tmp_path / "missing"), {})


def _wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _send_raw(root: str, path: str, body: dict[str, Any]) -> socket.socket:
    host, port = root.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


LONG = {"max_tokens": 900, "ignore_eos": True, "temperature": 0}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "tiny-m2", "messages": HI, **LONG}),
        ("/v1/messages", {"model": "tiny-m2", "messages": HI, "max_tokens": 900}),
        ("/v1/responses", {"model": "tiny-m2", "input": "hi", "max_output_tokens": 900}),
    ],
)
def test_a_non_streamed_request_is_aborted_when_its_client_leaves(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    def health() -> dict[str, Any]:
        return httpx.get(f"{server.root}/health", timeout=10).json()

    # The random tiny model may end a turn on its own (only chat has ignore_eos): a request that
    # finished before its client left proves nothing, so that attempt is sent again.
    for _ in range(4):
        before = health()
        sock = _send_raw(server.root, path, body)

        finished = before["requests_finished"]

        def running_or_done(finished: int = finished) -> bool:
            now = health()  # a short turn may start and end between two looks
            return now["requests_in_flight"] == 1 or now["requests_finished"] > finished

        assert _wait_for(running_or_done, 20), health()
        sock.close()
        assert _wait_for(lambda: health()["requests_in_flight"] == 0, 30), health()
        after = health()
        if after["requests_aborted"] > before["requests_aborted"]:
            return
        assert after["requests_finished"] > before["requests_finished"], after
    raise AssertionError(f"every attempt finished on its own before its client left: {after}")


def test_each_request_is_logged_with_its_tokens(server: Server) -> None:
    post(server, "/v1/chat/completions", {"model": "tiny-m2", "messages": HI, "max_tokens": 3})
    post(server, "/v1/chat/completions", {"model": "tiny-m2", "messages": [], "max_tokens": 3})
    time.sleep(0.2)
    lines = server.log.read_text().splitlines()
    ok = [line for line in lines if "POST /v1/chat/completions 200 prompt=" in line]
    assert ok and " completion=3 " in ok[-1] and " cached=" in ok[-1]
    assert any("POST /v1/chat/completions 400 " in line for line in lines)


def test_sigterm_stops_the_server_within_5_s_with_a_request_in_flight(
    server_checkpoint: Path, tmp_path: Path
) -> None:
    process, root = start_server(server_checkpoint, tmp_path / "log", "--max-model-len", "4096")
    try:
        body = {"model": "tiny-m2", "messages": HI, **LONG, "max_tokens": 3000}
        sock = _send_raw(root, "/v1/chat/completions", body)
        assert _wait_for(lambda: httpx.get(f"{root}/health").json()["requests_in_flight"] == 1, 20)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        assert time.monotonic() - started < 5
        sock.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_max_model_len_above_the_model_is_an_error(server_checkpoint: Path) -> None:
    result = subprocess.run(
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
            "--max-model-len",
            "1000000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    limit = json.loads((server_checkpoint / "config.json").read_text())["max_position_embeddings"]
    assert result.returncode == 1
    assert f"--max-model-len 1000000 is more than this model's context of {limit}" in result.stderr
