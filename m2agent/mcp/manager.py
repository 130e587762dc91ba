"""Connections to the session's MCP servers, owned by one background thread running an event
loop: servers start in parallel without blocking the caller, each within its startup timeout;
one that fails or hangs is reported (`statuses()`), never fatal; calls are synchronous for the
caller and bounded by the server's tool timeout; `stop()` ends every server (the SDK kills a
stdio server's whole process group; under bubblewrap `--die-with-parent` covers a crash of this
process too). stdio servers run in the same sandbox as Bash unless the sandbox is off.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from m2agent.mcp.config import ServerSpec
from m2agent.mcp.tool import McpTool, RemoteTool, render_content
from m2agent.tools.base import ToolResult
from m2agent.tools.sandbox.policy import SandboxPolicy
from m2agent.tools.shell import CommandRunner, SandboxMode

logger = logging.getLogger(__name__)

State = Literal["starting", "ready", "failed", "disabled", "stopped"]
STOP_GRACE_S = 10.0
MAX_TOOL_PAGES = 50
STDERR_TAIL_CHARS = 400
PING_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class ServerStatus:
    name: str
    source: str  # "user" | "project"
    transport: str  # "stdio" | "http"
    state: State
    detail: str  # the failure, or what runs ("12 tools", "disabled in config")
    tools: tuple[str, ...] = ()  # exposed names, when ready


class _Connection:
    """One server's live state, touched only on the manager's loop thread (except reads of
    the immutable `status`, replaced whole)."""

    def __init__(self, spec: ServerSpec) -> None:
        self.spec = spec
        self.status = ServerStatus(spec.name, spec.source, spec.transport, "starting", "starting")
        self.client: Any = None
        self.remote: list[RemoteTool] = []
        self.stop: asyncio.Event | None = None
        self.scope: Any = None  # the startup's anyio.CancelScope
        self.task: asyncio.Task[None] | None = None
        self.settled = threading.Event()  # ready, failed or disabled
        self.stderr_path: Path | None = None

    def set(self, state: State, detail: str, tools: tuple[str, ...] = ()) -> None:
        s = self.spec
        self.status = ServerStatus(s.name, s.source, s.transport, state, detail, tools)
        if state != "starting":
            self.settled.set()


class McpManager:
    """Start with `start()`, use `tools()` / `statuses()`, end with `stop()` (or `with`)."""

    def __init__(
        self,
        specs: Sequence[ServerSpec],
        workspace: Path,
        *,
        sandbox: SandboxMode = "auto",
        policy: SandboxPolicy | None = None,
        log_dir: Path | None = None,
    ) -> None:
        """`policy`: what stdio servers may do, as Bash commands (hidden secrets, limits); each
        server's `allow_network` applies on top. Default: the workspace's default policy."""
        self.workspace = workspace.resolve()
        self.sandbox = sandbox
        self._policy = policy or SandboxPolicy.for_workspace(self.workspace)
        self._log_dir = log_dir
        self._connections = {spec.name: _Connection(spec) for spec in specs}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._scratch = Path(tempfile.mkdtemp(prefix="m2agent-mcp-"))
        self._stopping = False

    def __enter__(self) -> McpManager:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Begin starting every enabled server in the background; returns at once."""
        if self._thread is not None:
            raise RuntimeError("McpManager.start() called twice")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="mcp", daemon=True)
        self._thread.start()
        for connection in self._connections.values():
            if not connection.spec.enabled:
                connection.set("disabled", "disabled in config")
                continue
            asyncio.run_coroutine_threadsafe(self._serve(connection), loop)

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """Block until every server is ready or has failed (each is bounded by its own
        startup timeout; `timeout_s` bounds the whole wait)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for connection in self._connections.values():
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            connection.settled.wait(left)

    def statuses(self) -> list[ServerStatus]:
        return [c.status for c in self._connections.values()]

    def tools(self) -> list[McpTool]:
        """The tools of the servers ready now (a later call sees servers that became ready)."""
        out: list[McpTool] = []
        for connection in self._connections.values():
            if connection.status.state == "ready":
                out += [McpTool(remote, self.call) for remote in connection.remote]
        return out

    def call(self, server: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
        """Run one tool call; failures (server gone, timeout, protocol error) are results."""
        connection = self._connections.get(server)
        if connection is None or connection.status.state != "ready" or self._loop is None:
            state = "unknown" if connection is None else connection.status.state
            return ToolResult(f"MCP server {server!r} is not available ({state})", is_error=True)
        timeout_s = connection.spec.tool_timeout_s
        future = asyncio.run_coroutine_threadsafe(
            self._call(connection, tool, arguments), self._loop
        )
        try:
            return future.result(timeout_s + 5)
        except FutureTimeout:
            future.cancel()
            return ToolResult(
                f"MCP tool {tool} on {server} did not answer within {timeout_s:g}s", is_error=True
            )

    def stop(self) -> None:
        """Stop every server (those still starting too) and the loop thread, waiting for the
        SDK to end each process; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            return
        self._stopping = True
        try:
            asyncio.run_coroutine_threadsafe(self._stop_all(), loop).result(STOP_GRACE_S + 5)
        except FutureTimeout:
            logger.warning("MCP servers did not stop within %ss", STOP_GRACE_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(STOP_GRACE_S)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None
        shutil.rmtree(self._scratch, ignore_errors=True)

    # --- on the loop thread -------------------------------------------------------------

    async def _stop_all(self) -> None:
        tasks = []
        for connection in self._connections.values():
            if connection.scope is not None and connection.status.state == "starting":
                connection.scope.cancel()
            if connection.stop is not None:
                connection.stop.set()
            if connection.task is not None:
                tasks.append(connection.task)
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_GRACE_S)

    async def _serve(self, connection: _Connection) -> None:
        import anyio
        from mcp import Client

        spec = connection.spec
        connection.task = asyncio.current_task()
        connection.stop = asyncio.Event()
        scope = anyio.CancelScope(deadline=anyio.current_time() + spec.startup_timeout_s)
        connection.scope = scope
        try:
            with scope:
                target, errlog = self._target(connection)
                try:
                    async with Client(
                        target, read_timeout_seconds=spec.startup_timeout_s, cache=None
                    ) as client:
                        remote = await self._list_tools(client, spec.name)
                        scope.deadline = float("inf")
                        connection.client, connection.remote = client, remote
                        names = tuple(McpTool(r, self.call).name for r in remote)
                        connection.set("ready", f"{len(remote)} tools", names)
                        await connection.stop.wait()
                finally:
                    if errlog is not None:
                        errlog.close()
            if scope.cancelled_caught and connection.status.state == "starting":
                connection.set(
                    "failed",
                    "stopped before it started"
                    if self._stopping
                    else f"did not start within {spec.startup_timeout_s:g}s"
                    + self._stderr(connection),
                )
        except Exception as e:
            connection.set("failed", f"{_reason(e)}{self._stderr(connection)}")
        finally:
            connection.client = None
            if connection.status.state in ("ready", "starting"):
                connection.set("stopped", "stopped")

    def _target(self, connection: _Connection) -> tuple[Any, Any]:
        """The SDK's connection target for a spec, and the stderr file of a stdio server."""
        from mcp import StdioServerParameters, stdio_client

        spec = connection.spec
        if spec.transport == "http":
            if spec.headers:
                from mcp.client.streamable_http import streamable_http_client
                from mcp.shared._httpx_utils import create_mcp_http_client

                http = create_mcp_http_client(headers=dict(spec.headers))
                return streamable_http_client(str(spec.url), http_client=http), None
            return str(spec.url), None
        cwd = Path(spec.cwd).expanduser() if spec.cwd else self.workspace
        if not cwd.is_absolute():
            cwd = self.workspace / cwd
        policy = replace(self._policy, allow_network=spec.allow_network)
        runner = CommandRunner(policy, self.sandbox)
        private_tmp = self._scratch / spec.name
        private_tmp.mkdir(exist_ok=True)
        argv, env = runner.sandboxed_argv([str(spec.command), *spec.args], cwd, private_tmp)
        env.update(spec.env)
        log_dir = self._log_dir or self._scratch
        log_dir.mkdir(parents=True, exist_ok=True)
        connection.stderr_path = log_dir / f"mcp-{spec.name}.log"
        errlog = connection.stderr_path.open("w", encoding="utf-8")
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=str(cwd))
        return stdio_client(params, errlog=errlog), errlog

    async def _list_tools(self, client: Any, server: str) -> list[RemoteTool]:
        remote: list[RemoteTool] = []
        cursor = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor)
            for tool in page.tools:
                hints = tool.annotations
                read_only = bool(hints and hints.read_only_hint)
                destructive = not read_only and (
                    hints is None or hints.destructive_hint is None or hints.destructive_hint
                )
                remote.append(
                    RemoteTool(
                        server,
                        tool.name,
                        tool.description or "",
                        tool.input_schema or {},
                        read_only,
                        bool(destructive),
                    )
                )
            cursor = page.next_cursor
            if not cursor:
                break
        return remote

    async def _call(
        self, connection: _Connection, tool: str, arguments: dict[str, Any]
    ) -> ToolResult:
        import anyio

        client, timeout_s = connection.client, connection.spec.tool_timeout_s
        if client is None:
            return ToolResult(f"MCP server {connection.spec.name!r} has stopped", is_error=True)
        try:
            with anyio.fail_after(timeout_s):
                result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout_s)
        except TimeoutError:
            return ToolResult(
                f"MCP tool {tool} on {connection.spec.name} did not answer within {timeout_s:g}s",
                is_error=True,
            )
        except Exception as e:  # the per-tool-call boundary: a broken server is a result
            logger.debug("MCP call %s on %s failed", tool, connection.spec.name, exc_info=True)
            await self._check_alive(connection, client)
            return ToolResult(
                f"MCP tool {tool} on {connection.spec.name} failed: {_reason(e)}", is_error=True
            )
        blocks = [b.model_dump(mode="json", by_alias=True) for b in result.content]
        return render_content(blocks, result.structured_content, bool(result.is_error))

    async def _check_alive(self, connection: _Connection, client: Any) -> None:
        """After a failed call: a server that no longer answers (a tools/list, which every
        protocol version has; ping is gone from the 2026 one) is marked failed and its
        connection closed, so its tools leave the tool set."""
        import anyio

        try:
            with anyio.fail_after(PING_TIMEOUT_S):
                await client.list_tools(cache_mode="bypass")
        except Exception as e:
            connection.set("failed", f"connection lost ({_reason(e)}){self._stderr(connection)}")
            if connection.stop is not None:
                connection.stop.set()

    def _stderr(self, connection: _Connection) -> str:
        path = connection.stderr_path
        if path is None or not path.is_file():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        return f"; its stderr ends: {text[-STDERR_TAIL_CHARS:]}" if text else ""


def _reason(error: BaseException) -> str:
    """An exception in words; exception groups (anyio task groups) unwrapped to their causes."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_reason(e) for e in error.exceptions)
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
