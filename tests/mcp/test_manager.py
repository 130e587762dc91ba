"""The MCP manager against real servers written with the `mcp` SDK (tests/fakes/mcp_server.py):
stdio under the sandbox and streamable HTTP on loopback, a crashing and a hanging server, timeouts,
and no server process left behind."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp_server import HttpMcpServer

from m2agent.mcp.config import ServerSpec
from m2agent.mcp.manager import McpManager
from m2agent.tools.registry import ToolRegistry
from m2agent.tools.sandbox.policy import SandboxPolicy

FIXTURE = str(Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py")


def stdio(name: str, mode: str, marker: str, **kw: Any) -> ServerSpec:
    return ServerSpec(
        name, "user", "stdio", command=sys.executable, args=(FIXTURE, mode, marker), **kw
    )


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def gone(marker: str, within_s: float = 5.0) -> list[int]:
    """The processes still carrying the marker once they had `within_s` to finish dying: the
    SDK kills the sandbox's outer process, and the server inside it ends by its parent-death
    signal, which the kernel delivers asynchronously (a loaded machine shows it alive briefly)."""
    deadline = time.monotonic() + within_s
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@pytest.fixture(scope="module")
def marker() -> str:
    return f"m2agent-test-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ws")


@pytest.fixture(scope="module")
def http_server() -> Iterator[HttpMcpServer]:
    with HttpMcpServer() as server:
        yield server


@pytest.fixture(scope="module")
def manager(marker: str, workspace: Path, http_server: HttpMcpServer) -> Iterator[McpManager]:
    os.environ["FIXTURE_API_KEY"] = "secret"  # must not reach a sandboxed server
    specs = [
        stdio("local", "ok", marker, env={"GIVEN": "by-config"}, tool_timeout_s=2.0),
        stdio("crashes", "crash", marker),
        stdio("hangs", "hang", marker, startup_timeout_s=1.5),
        stdio("off", "ok", marker, enabled=False),
        ServerSpec("web", "user", "http", url=http_server.url, headers={"X-Token": "t"}),
    ]
    manager = McpManager(specs, workspace, log_dir=workspace.parent / "logs")
    started = time.monotonic()
    manager.start()
    assert time.monotonic() - started < 1.0, "start() must not wait for the servers"
    manager.wait_ready(60)
    yield manager
    manager.stop()
    del os.environ["FIXTURE_API_KEY"]


def test_servers_are_reported_ready_failed_or_disabled(manager: McpManager) -> None:
    states = {s.name: s for s in manager.statuses()}
    assert states["local"].state == "ready" and "mcp__local__add" in states["local"].tools
    assert states["web"].state == "ready" and "mcp__web__add" in states["web"].tools
    assert states["crashes"].state == "failed"
    assert "cannot start (crash mode)" in states["crashes"].detail  # its stderr, for the user
    assert (
        states["hangs"].state == "failed" and "did not start within 1.5s" in states["hangs"].detail
    )
    assert states["off"].state == "disabled"


def test_tools_carry_the_servers_schema_and_read_only_hint(manager: McpManager) -> None:
    registry = ToolRegistry(manager.tools())
    schemas = {s["function"]["name"]: s["function"] for s in registry.schemas()}
    add = schemas["mcp__local__add"]
    assert add["parameters"]["required"] == ["a", "b"]
    assert add["parameters"]["properties"]["a"]["type"] == "integer"
    assert add["description"] == "Add two integers."
    assert registry.get("mcp__local__add").annotations.read_only
    write = registry.get("mcp__web__write_file").annotations
    assert not write.read_only and write.destructive
    assert not any(
        name.startswith(("mcp__crashes", "mcp__hangs", "mcp__off")) for name in registry.names
    )


def test_calls_over_stdio_and_http(manager: McpManager, http_server: HttpMcpServer) -> None:
    registry = ToolRegistry(manager.tools())
    assert registry.call("mcp__local__add", {"a": 2, "b": 40}).content == "42"
    assert registry.call("mcp__web__add", {"a": 1, "b": 1}).content == "2"
    assert any(h.get("x-token") == "t" for h in http_server.headers_seen)
    picture = registry.call("mcp__local__picture", {})
    assert picture.content.startswith("[image (image/png") and not picture.is_error
    bad = registry.call("mcp__local__add", {"a": "x"})
    assert bad.is_error and "validation error" in bad.content


def test_stdio_servers_run_in_the_sandbox(
    manager: McpManager, workspace: Path, tmp_path: Path
) -> None:
    registry = ToolRegistry(manager.tools())
    outside = tmp_path / "escaped.txt"
    result = registry.call("mcp__local__write_file", {"path": str(outside), "text": "x"})
    assert result.is_error and not outside.exists()
    inside = registry.call(
        "mcp__local__write_file", {"path": str(workspace / "ok.txt"), "text": "hi"}
    )
    assert not inside.is_error and (workspace / "ok.txt").read_text() == "hi"
    assert registry.call("mcp__local__getenv", {"name": "FIXTURE_API_KEY"}).content == "(unset)"
    assert registry.call("mcp__local__getenv", {"name": "GIVEN"}).content == "by-config"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert registry.call("mcp__local__connect", {"port": port}).content.startswith("refused")
        # the HTTP server is not sandboxed: it is ours, in this process
        assert registry.call("mcp__web__connect", {"port": port}).content == "connected"


def test_a_slow_tool_times_out_and_the_server_stays_usable(manager: McpManager) -> None:
    registry = ToolRegistry(manager.tools())
    started = time.monotonic()
    slow = registry.call("mcp__local__slow", {"seconds": 30})
    assert slow.is_error and "did not answer within 2s" in slow.content
    assert time.monotonic() - started < 10
    assert registry.call("mcp__local__add", {"a": 1, "b": 2}).content == "3"


def test_unknown_server_is_a_result_not_a_crash(manager: McpManager) -> None:
    result = manager.call("hangs", "add", {})
    assert result.is_error and "not available (failed)" in result.content


def test_a_server_that_dies_mid_session_and_no_process_left(workspace: Path) -> None:
    marker = f"m2agent-test-{uuid.uuid4().hex}"
    with McpManager([stdio("dies", "ok", marker)], workspace) as manager:
        manager.wait_ready(60)
        assert processes_with(marker)
        registry = ToolRegistry(manager.tools())
        died = registry.call("mcp__dies__die", {})
        assert died.is_error
        after = registry.call("mcp__dies__add", {"a": 1, "b": 1})
        assert after.is_error
        (status,) = manager.statuses()
        assert status.state == "failed" and "connection lost" in status.detail
        assert manager.tools() == []  # its tools leave the tool set
    assert gone(marker) == []


def test_stopping_while_a_server_is_still_starting(workspace: Path) -> None:
    marker = f"m2agent-test-{uuid.uuid4().hex}"
    manager = McpManager([stdio("slow", "hang", marker, startup_timeout_s=60)], workspace)
    manager.start()
    deadline = time.monotonic() + 20
    while not processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker), "the server process should be up"
    started = time.monotonic()
    manager.stop()
    assert time.monotonic() - started < 10  # not the 60 s startup timeout
    assert gone(marker) == []
    (status,) = manager.statuses()
    assert status.state == "failed" and status.detail == "stopped before it started"


def test_a_failed_call_on_a_live_server_keeps_it_ready(manager: McpManager) -> None:
    result = manager.call("local", "no_such_tool", {})
    assert result.is_error
    states = {s.name: s.state for s in manager.statuses()}
    assert states["local"] == "ready"


def test_stop_leaves_no_server_process(marker: str, manager: McpManager) -> None:
    assert processes_with(marker), "the fixture servers should be running now"
    manager.stop()
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(marker) == []
    assert all(s.state in ("stopped", "failed", "disabled") for s in manager.statuses())


def test_stdio_servers_get_the_sessions_sandbox_policy(tmp_path: Path) -> None:
    """The policy Bash commands run under (hidden secrets, limits) binds MCP servers too."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    secret = tmp_path / "secrets" / "token.txt"
    secret.parent.mkdir()
    secret.write_text("s3cret")
    policy = SandboxPolicy.for_workspace(workspace, deny_read=[secret.parent])
    marker = f"m2agent-test-{uuid.uuid4().hex}"
    with McpManager([stdio("local", "ok", marker)], workspace, policy=policy) as manager:
        manager.wait_ready(60)
        registry = ToolRegistry(manager.tools())
        hidden = registry.call("mcp__local__read_file", {"path": str(secret)})
        assert hidden.is_error and "s3cret" not in hidden.content
