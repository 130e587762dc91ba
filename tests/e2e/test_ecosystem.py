"""MCP servers, hooks and Claude Code's stream-json end to end through the real CLI: a loopback
model server plays scripted M2 turns, real MCP servers (written with the `mcp` SDK) serve
tools over stdio and streamable HTTP, hooks are real bash scripts."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp_server import HttpMcpServer
from model_server import FakeM2Server
from stream_json_shape import check_event, check_stream

from m2agent.tools.sandbox import bwrap

FIXTURE = str(Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py")


def call(name: str, **arguments: object) -> str:
    params = "".join(
        f'<parameter name="{k}">{json.dumps(v) if not isinstance(v, str) else v}</parameter>\n'
        for k, v in arguments.items()
    )
    return f'<minimax:tool_call>\n<invoke name="{name}">\n{params}</invoke>\n</minimax:tool_call>'


def turn(thinking: str, *calls: str, answer: str = "") -> str:
    return f"{thinking}\n</think>\n\n{answer}" + "".join(calls)


def run_cli(
    repo: Path, *args: str, stdin: str | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    sandbox = [] if bwrap.probe().works else ["--sandbox", "off"]
    return subprocess.run(
        [sys.executable, "-m", "m2agent", *args, *sandbox],
        cwd=repo,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
    )


def user_config(text: str) -> None:
    import os

    config = Path(os.environ["XDG_CONFIG_HOME"]) / "m2agent" / "config.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(text)


def tool_messages(request: dict[str, Any]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in request["messages"] if m["role"] == "tool"}


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


def server_entry(name: str, mode: str, marker: str) -> str:
    args = json.dumps([FIXTURE, mode, marker])
    return f"[mcp_servers.{name}]\ncommand = {json.dumps(sys.executable)}\nargs = {args}\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "precious.txt").write_text("keep me\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


@pytest.fixture
def http_mcp() -> Iterator[HttpMcpServer]:
    with HttpMcpServer() as server:
        yield server


def test_mcp_tools_over_stdio_and_http_in_stream_json(repo: Path, http_mcp: HttpMcpServer) -> None:
    marker = f"m2agent-e2e-{uuid.uuid4().hex}"
    user_config(
        server_entry("local", "ok", marker)
        + f"[mcp_servers.web]\nurl = '{http_mcp.url}'\n"
        + server_entry("broken", "crash", marker)
        + server_entry("stuck", "hang", marker)
        + "startup_timeout = 1.5\n"
    )
    script = [
        turn("Add with the local server.", call("mcp__local__add", a=2, b=40)),
        turn(
            "Write with the web server.",
            call("mcp__web__write_file", path=str(repo / "from-mcp.txt"), text="hello"),
        ),
        turn("Done.", answer="2 + 40 = 42, and the file is written."),
    ]
    with FakeM2Server(script, "split") as server:
        done = run_cli(
            repo, "fix", "use the MCP tools", "--endpoint", server.url, "--model", "m2",
            "--yes", "--test-cmd", "true", "--output-format", "stream-json",
        )  # fmt: skip
        requests = server.requests
    events = check_stream(done.stdout)
    init = events[0]
    servers = {s["name"]: s["status"] for s in init["mcp_servers"]}
    assert servers == {"local": "connected", "web": "connected", "broken": "failed",
                       "stuck": "failed"}  # fmt: skip
    assert "mcp__local__add" in init["tools"] and "mcp__web__write_file" in init["tools"]
    assert init["permissionMode"] == "bypassPermissions"  # --yes, in Claude Code's words
    offered = {t["function"]["name"]: t["function"] for t in requests[0]["tools"]}
    assert offered["mcp__local__add"]["parameters"]["required"] == ["a", "b"]
    assert not any(name.startswith(("mcp__broken", "mcp__stuck")) for name in offered)
    assert next(iter(tool_messages(requests[1]).values())).startswith("42")
    assert (repo / "from-mcp.txt").read_text() == "hello"
    result = events[-1]
    assert result["subtype"] == "success" and result["num_turns"] == 3
    assert processes_with(marker) == []


def test_mcp_approvals_follow_the_read_only_hint(repo: Path) -> None:
    python = json.dumps(sys.executable)
    user_config(f"[mcp_servers.local]\ncommand = {python}\nargs = [{json.dumps(FIXTURE)}]\n")
    script = [
        turn(
            "Both.",
            call("mcp__local__add", a=1, b=1),
            call("mcp__local__write_file", path=str(repo / "x.txt"), text="x"),
        ),
        turn("Ok.", answer="One ran, one was refused."),
    ]
    with FakeM2Server(script, "split") as server:
        done = run_cli(
            repo, "fix", "try", "--endpoint", server.url, "--model", "m2", "--test-cmd", "true",
            "--json",
        )  # fmt: skip
        results = list(tool_messages(server.requests[1]).values())
    assert results[0].startswith("2")  # read-only: runs like Read
    assert "needs approval" in results[1] and not (repo / "x.txt").exists()
    assert json.loads(done.stdout)["status"] in ("not_fixed", "answered", "fixed")


def test_project_servers_need_approval_even_with_yes(repo: Path) -> None:
    marker = f"m2agent-e2e-{uuid.uuid4().hex}"
    servers = {"proj": {"command": sys.executable, "args": [FIXTURE, "ok", marker]}}
    (repo / ".mcp.json").write_text(json.dumps({"mcpServers": servers}))
    with FakeM2Server([turn("Nothing.", answer="ok")], "split") as server:
        done = run_cli(
            repo, "fix", "x", "--endpoint", server.url, "--model", "m2", "--yes",
            "--test-cmd", "true",
        )  # fmt: skip
        offered = [t["function"]["name"] for t in server.requests[0]["tools"]]
    assert not any(name.startswith("mcp__proj") for name in offered)
    assert "not started until you approve them: proj" in done.stderr
    assert run_cli(repo, "mcp", "approve", "proj").returncode == 0
    with FakeM2Server([turn("Nothing.", answer="ok")], "split") as server:
        run_cli(repo, "fix", "x", "--endpoint", server.url, "--model", "m2", "--yes",
                "--test-cmd", "true")  # fmt: skip
        offered = [t["function"]["name"] for t in server.requests[0]["tools"]]
    assert "mcp__proj__add" in offered
    assert processes_with(marker) == []


def test_hooks_block_rm_and_see_tool_responses(repo: Path, tmp_path: Path) -> None:
    seen = tmp_path / "post.jsonl"
    block_rm = tmp_path / "block_rm.sh"
    block_rm.write_text(
        "#!/bin/bash\ncommand=$(python3 -c 'import json,sys; "
        'print(json.load(sys.stdin)["tool_input"]["command"])\')\n'
        'if [[ "$command" == rm* ]]; then\n'
        '  echo "rm is not allowed here: use git rm" >&2; exit 2\nfi\n'
    )
    block_rm.chmod(0o755)
    record = f"cat >> {seen}; echo >> {seen}"
    user_config(
        f'[[hooks.PreToolUse]]\nmatcher = "Bash"\n'
        f'hooks = [{{ type = "command", command = "{block_rm}" }}]\n'
        f'[[hooks.PostToolUse]]\nmatcher = "Bash|Read"\n'
        f'hooks = [{{ type = "command", command = "{record}" }}]\n'
    )
    untrusted = tmp_path / "untrusted-ran"
    (repo / ".m2agent").mkdir()
    (repo / ".m2agent" / "config.toml").write_text(
        f'[[hooks.PreToolUse]]\nhooks = [{{ type = "command", command = "touch {untrusted}" }}]\n'
    )
    script = [
        turn("Remove it.", call("Bash", command="rm precious.txt")),
        turn("Then list.", call("Bash", command="ls")),
        turn("Fine.", answer="Kept the file."),
    ]
    with FakeM2Server(script, "split") as server:
        done = run_cli(
            repo, "fix", "tidy", "--endpoint", server.url, "--model", "m2", "--yes",
            "--test-cmd", "true",
        )  # fmt: skip
        blocked = next(iter(tool_messages(server.requests[1]).values()))
    assert "rm is not allowed here: use git rm" in blocked
    assert (repo / "precious.txt").read_text() == "keep me\n"
    posts = [json.loads(line) for line in seen.read_text().splitlines() if line.strip()]
    assert [p["tool_input"]["command"] for p in posts] == ["ls"]  # the blocked call never ran
    assert posts[0]["permission_mode"] == "bypassPermissions"
    assert posts[0]["hook_event_name"] == "PostToolUse" and "precious.txt" in str(
        posts[0]["tool_response"]
    )
    assert not untrusted.exists()
    assert "hooks ignored: the project is not trusted" in done.stderr


def test_stream_json_input_runs_each_user_line_as_a_turn(repo: Path) -> None:
    lines = [
        json.dumps({"type": "user", "message": {"role": "user", "content": "first question"}}),
        json.dumps(
            {
                "type": "user",
                "message": {"role": "user", "content": [{"type": "text", "text": "second"}]},
            }
        ),
    ]
    script = [turn("One.", answer="answer one"), turn("Two.", answer="answer two")]
    with FakeM2Server(script, "split") as server:
        done = run_cli(
            repo, "--endpoint", server.url, "--model", "m2", "--input-format", "stream-json",
            "--output-format", "stream-json", stdin="\n".join(lines) + "\n",
        )  # fmt: skip
        requests = server.requests
    events = [json.loads(line) for line in done.stdout.splitlines()]
    for event in events:
        check_event(event)
    results = [e for e in events if e["type"] == "result"]
    assert [r["result"] for r in results] == ["answer one", "answer two"]
    users = [m["content"] for m in requests[1]["messages"] if m["role"] == "user"]
    assert users[0].startswith("first question") and users[-1].startswith("second")
    assert len({e["session_id"] for e in events}) == 1


def test_json_output_is_the_result_object_alone(repo: Path) -> None:
    with FakeM2Server([turn("Hm.", answer="It is a repo.")], "split") as server:
        done = run_cli(
            repo, "-p", "what is this?", "--endpoint", server.url, "--model", "m2",
            "--output-format", "json",
        )  # fmt: skip
    result = json.loads(done.stdout)
    assert check_event(result) == "result"
    assert result["result"] == "It is a repo." and result["is_error"] is False
    assert result["m2agent"]["files_changed"] == []
