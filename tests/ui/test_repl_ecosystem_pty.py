"""The REPL with MCP servers and hooks, in a real pseudo-terminal: /mcp shows each server,
/mcp approve starts a project's server, its tools reach the model, a UserPromptSubmit hook can
refuse a message, and leaving the REPL leaves no server process behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pexpect
import pytest
from model_server import FakeM2Server

from m2agent.tools.sandbox import bwrap

pytestmark = [pytest.mark.pty, pytest.mark.timeout(180)]
PROMPT = "m2agent>"
FIXTURE = str(Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py")


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_mcp_and_hooks_in_the_repl(tmp_path: Path) -> None:
    marker = f"m2agent-repl-{uuid.uuid4().hex}"
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    servers = {"proj": {"command": sys.executable, "args": [FIXTURE, "ok", marker]}}
    (repo / ".mcp.json").write_text(json.dumps({"mcpServers": servers}))
    refuse = "grep -q secret && { echo 'no secrets in prompts' >&2; exit 2; }; exit 0"
    config = Path(os.environ["XDG_CONFIG_HOME"]) / "m2agent" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        f"[mcp_servers.local]\ncommand = {json.dumps(sys.executable)}\n"
        f"args = {json.dumps([FIXTURE, 'ok', marker])}\n"
        "[[hooks.UserPromptSubmit]]\n"
        f"hooks = [{{ type = 'command', command = {json.dumps(refuse)} }}]\n"
    )
    turns = [
        "Use the project's adder.\n</think>\n\n<minimax:tool_call>\n"
        '<invoke name="mcp__proj__add">\n<parameter name="a">40</parameter>\n'
        '<parameter name="b">2</parameter>\n</invoke>\n</minimax:tool_call>',
        "Got it.\n</think>\n\nThe sum is forty-two.",
    ]
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    sandbox = [] if bwrap.probe().works else ["--sandbox", "off"]
    with FakeM2Server(turns, "split") as server:
        child = pexpect.spawn(
            sys.executable, ["-m", "m2agent", "--endpoint", server.url, "--model", "m", *sandbox],
            cwd=str(repo), env=env, dimensions=(40, 120), encoding="utf-8", timeout=60,
        )  # fmt: skip
        try:
            child.expect("not started until you approve them: proj")
            child.expect(PROMPT)
            deadline = time.monotonic() + 60
            while True:
                child.sendline("/mcp")
                if child.expect([r"local +ready: 9 tools", r"local +starting"]) == 0:
                    break
                assert time.monotonic() < deadline, "the local server never became ready"
                child.expect(PROMPT)
                time.sleep(0.5)
            child.expect(r"proj +needs approval")
            child.expect(PROMPT)
            child.sendline("tell me the secret")
            child.expect("not sent: a UserPromptSubmit hook refused it: no secrets in prompts")
            child.expect(PROMPT)
            child.sendline("/mcp approve proj")
            child.expect("approved for")
            child.expect(PROMPT)
            time.sleep(0.5)
            deadline = time.monotonic() + 60
            while True:
                child.sendline("/mcp")
                if child.expect([r"proj +ready", r"proj +starting"]) == 0:
                    break
                assert time.monotonic() < deadline, "the project server never became ready"
                child.expect(PROMPT)
                time.sleep(0.5)
            child.expect(PROMPT)
            child.sendline("add forty and two")
            child.expect("The sum is forty-two.")
            child.expect(PROMPT)
            child.sendeof()
            child.expect(pexpect.EOF)
        finally:
            if child.isalive():
                child.terminate(force=True)
        requests = server.requests
    assert len(requests) == 2  # the refused prompt never reached the model
    offered = [t["function"]["name"] for t in requests[0]["tools"]]
    assert "mcp__proj__add" in offered and "mcp__local__add" in offered
    tool_results = [m["content"] for m in requests[1]["messages"] if m["role"] == "tool"]
    assert tool_results[0].startswith("42")
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_with(marker) == []
