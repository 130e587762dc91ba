"""Crash-safe resume, end to end: the real CLI is killed with SIGKILL in the middle of a task,
then `fix --continue` must send the model the whole history, including the killed round's
assistant turns (reasoning included) and tool results."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from model_server import FakeM2Server

from m2agent.tools.sandbox import bwrap

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "notes.txt").write_text("hello\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def sandbox_flag() -> list[str]:
    return [] if bwrap.probe().works else ["--sandbox", "off"]


def start(repo: Path, server: FakeM2Server, task: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "m2agent", "fix", task, "--endpoint", server.url, "--model", "m",
         "--yes", "--test-cmd", "true", *sandbox_flag()],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def session_records(repo: Path) -> list[dict[str, object]]:
    files = list((Path(os.environ["HOME"]) / "xdg_state_home").rglob("sessions/*.jsonl"))
    if not files:
        return []
    records = []
    for line in files[0].read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # the line being written
            records.append(json.loads(line))
    return records


def call(command: str, reasoning: str) -> str:
    return (
        f'{reasoning}\n</think>\n\n<minimax:tool_call>\n<invoke name="Bash">\n'
        f'<parameter name="command">{command}</parameter>\n</invoke>\n</minimax:tool_call>'
    )


def resumed_history(repo: Path, port: int) -> list[dict[str, Any]]:
    with FakeM2Server(["Back.\n</think>\n\nDone now."], "split", port=port) as server:
        done = subprocess.run(
            [sys.executable, "-m", "m2agent", "fix", "go on", "--continue", "--endpoint",
             server.url, "--model", "m", "--yes", "--test-cmd", "true", *sandbox_flag()],
            cwd=repo, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode in (0, 1), done.stderr
        return server.requests[0]["messages"]


def test_kill_9_while_the_model_streams_keeps_the_finished_round(repo: Path) -> None:
    slow_answer = "Writing a long answer.\n</think>\n\n" + " ".join(f"w{i}" for i in range(2000))
    turns = [call("echo from-the-tool", "First I run a command."), slow_answer]
    with FakeM2Server(turns, "split", delay_s=0.01) as server:
        port = server._server.server_address[1]
        process = start(repo, server, "run the command")
        wait_for(lambda: len(server.requests) >= 2, process)  # round 2 is streaming
        time.sleep(0.3)
        process.send_signal(signal.SIGKILL)
        process.wait()
    messages = resumed_history(repo, port)
    assistant = next(m for m in messages if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "First I run a command."
    assert assistant["tool_calls"][0]["function"]["name"] == "Bash"
    result = next(m for m in messages if m["role"] == "tool")
    assert result["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert "from-the-tool" in result["content"]
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert users[0].startswith("run the command") and users[-1].startswith("go on")


def test_kill_9_during_a_tool_call_answers_it_as_interrupted(repo: Path) -> None:
    turns = [call("sleep 4; echo late", "A slow command.")]
    with FakeM2Server(turns, "split") as server:
        port = server._server.server_address[1]
        process = start(repo, server, "wait a bit")
        # The assistant message (with its call) is on disk before the tool runs.
        wait_for(
            lambda: any(
                r.get("kind") == "message" and r["message"]["role"] == "assistant"  # type: ignore[index]
                for r in session_records(repo)
            ),
            process,
        )
        process.send_signal(signal.SIGKILL)
        process.wait()
    messages = resumed_history(repo, port)
    assistant = next(m for m in messages if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "A slow command."
    (result,) = [m for m in messages if m["role"] == "tool"]
    assert result["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert result["content"].startswith("interrupted")
