"""A real MCP server written with the official `mcp` SDK, for tests.

As a program: `python mcp_server.py [ok|crash|hang]` serves over stdio (`crash` exits at once
after a line on stderr; `hang` never answers). In-process: `HttpMcpServer` serves the same
tools over streamable HTTP on 127.0.0.1 (an OS-picked port) in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.types import ImageContent, ToolAnnotations


def build_server() -> MCPServer:
    server: MCPServer = MCPServer("fixture")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def read_file(path: str) -> str:
        """Read a text file."""
        return Path(path).read_text()

    @server.tool()
    def write_file(path: str, text: str) -> str:
        """Write text to a file (absolute path, or relative to the server's cwd)."""
        Path(path).write_text(text)
        return f"wrote {len(text)} characters to {path}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def getenv(name: str) -> str:
        """An environment variable of the server process, or (unset)."""
        return os.environ.get(name, "(unset)")

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def connect(port: int) -> str:
        """Try a TCP connection to 127.0.0.1:PORT."""
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                return "connected"
        except OSError as e:
            return f"refused: {e}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def picture() -> ImageContent:
        """A 16-byte picture."""
        return ImageContent(
            type="image", data=base64.b64encode(b"x" * 16).decode(), mime_type="image/png"
        )

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def slow(seconds: float) -> str:
        """Sleep, then answer."""
        time.sleep(seconds)
        return "done"

    @server.tool()
    def die() -> str:
        """Exit the server process."""
        os._exit(7)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    return server


class HttpMcpServer:
    """The fixture server over streamable HTTP on loopback, in a thread."""

    def __init__(self, *, headers_seen: list[dict[str, str]] | None = None) -> None:
        self.headers_seen = headers_seen if headers_seen is not None else []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def __enter__(self) -> HttpMcpServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while (self._server is None or not self._server.started) and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(10)

    def _run(self) -> None:
        import uvicorn

        app = build_server().streamable_http_app()
        seen = self.headers_seen

        async def recording(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append({k.decode(): v.decode() for k, v in scope["headers"]})
            await app(scope, receive, send)

        config = uvicorn.Config(recording, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        asyncio.run(self._server.serve(sockets=[self._sock]))


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    if mode == "crash":
        print("fixture: cannot start (crash mode)", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(3600)
    build_server().run("stdio")
