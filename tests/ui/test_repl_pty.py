"""The REPL in a real pseudo-terminal (pexpect), against the loopback fake M2 server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from model_server import FakeM2Server

from m2agent.tools.sandbox import bwrap

pytestmark = [pytest.mark.pty, pytest.mark.timeout(120)]
PROMPT = "m2agent>"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def spawn(repo: Path, server: FakeM2Server, *extra: str) -> pexpect.spawn:
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    sandbox = [] if bwrap.probe().works else ["--sandbox", "off"]
    child = pexpect.spawn(
        sys.executable,
        ["-m", "m2agent", "--endpoint", server.url, "--model", "m", *sandbox, *extra],
        cwd=str(repo), env=env, dimensions=(30, 100), encoding="utf-8", timeout=30,
    )  # fmt: skip
    child.expect(PROMPT)
    return child


def finish(child: pexpect.spawn) -> int:
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


@pytest.fixture
def cleanup() -> Iterator[list[pexpect.spawn]]:
    children: list[pexpect.spawn] = []
    yield children
    for child in children:
        if child.isalive():
            child.terminate(force=True)


def test_answer_streams_and_ctrl_d_exits(repo: Path, cleanup: list) -> None:
    with FakeM2Server(["Say hello.\n</think>\n\nHello from the model!"], "split") as server:
        child = spawn(repo, server)
        cleanup.append(child)
        child.sendline("say hi")
        child.expect("Say hello.")  # the reasoning, dimmed
        child.expect("Hello from the model!")
        child.expect(PROMPT)
        assert finish(child) == 0


def test_approval_prompt_then_command_runs(repo: Path, cleanup: list) -> None:
    turns = [
        'Run it.\n</think>\n\n<minimax:tool_call>\n<invoke name="Bash">\n'
        '<parameter name="command">echo approved-$((40+2))</parameter>\n'
        "</invoke>\n</minimax:tool_call>",
        "Done.\n</think>\n\nIt printed 42.",
    ]
    with FakeM2Server(turns, "split") as server:
        child = spawn(repo, server, "--mode", "ask")
        cleanup.append(child)
        child.sendline("run the command")
        child.expect("Bash runs a command")
        child.expect(r"\$ echo approved-\$\(\(40\+2\)\)")  # the preview: command and dir
        child.expect(str(repo))
        child.expect("Allow\\?")
        child.send("y")  # one key, no Enter
        child.expect("approved-42")
        child.expect("It printed 42.")
        child.expect(PROMPT)
        assert finish(child) == 0


def test_ctrl_c_mid_stream_keeps_the_session(repo: Path, cleanup: list) -> None:
    long = "Thinking slowly.\n</think>\n\n" + " ".join(f"word{i}" for i in range(400))
    with FakeM2Server([long, "Next.\n</think>\n\nSecond answer."], "split", delay_s=0.05) as server:
        child = spawn(repo, server)
        cleanup.append(child)
        child.sendline("write a lot")
        child.expect("word5")
        child.sendintr()
        child.expect("interrupted")
        child.expect(PROMPT)
        child.sendline("and now?")
        child.expect("Second answer.")
        child.expect(PROMPT)
        assert finish(child) == 0
        second = server.requests[1]["messages"]
        assert second[-1] == {"role": "user", "content": "and now?"}


def test_diff_and_undo(repo: Path, cleanup: list) -> None:
    turns = [
        'Fix.\n</think>\n\n<minimax:tool_call>\n<invoke name="Edit">\n'
        '<parameter name="file_path">calc.py</parameter>\n'
        '<parameter name="old_string">return a - b</parameter>\n'
        '<parameter name="new_string">return a + b</parameter>\n</invoke>\n</minimax:tool_call>',
        "Fixed.\n</think>\n\nadd() adds now.",
    ]
    with FakeM2Server(turns, "split") as server:
        child = spawn(repo, server, "--mode", "auto")
        cleanup.append(child)
        child.sendline("fix add")
        child.expect("add\\(\\) adds now.")
        child.expect(PROMPT)
        assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
        child.sendline("/diff")
        child.expect("return a \\+ b")
        child.expect(PROMPT)
        child.sendline("/undo")
        child.expect("restored the workspace")
        child.expect(PROMPT)
        assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"
        assert finish(child) == 0


def test_piped_stdin_runs_headless(repo: Path) -> None:
    with FakeM2Server(["Easy.\n</think>\n\nHeadless answer."], "split") as server:
        sandbox = [] if bwrap.probe().works else ["--sandbox", "off"]
        done = subprocess.run(
            [sys.executable, "-m", "m2agent", "--endpoint", server.url, "--model", "m", "--yes",
             "--json", *sandbox],
            input="what is 1+1?", cwd=repo, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert '"answer": "Headless answer."' in done.stdout
    assert server.requests[0]["messages"][1]["content"].startswith("what is 1+1?")


def test_sessions_and_resume_commands(repo: Path, cleanup: list) -> None:
    with FakeM2Server(["A.\n</think>\n\nFirst.", "B.\n</think>\n\nSecond."], "split") as server:
        child = spawn(repo, server)
        cleanup.append(child)
        child.sendline("remember the number 7")
        child.expect("First.")
        child.expect(PROMPT)
        child.sendline("/clear")
        child.expect("conversation cleared")
        child.sendline("/resume")
        child.expect("resumed")
        child.expect(PROMPT)
        child.sendline("what number?")
        child.expect("Second.")
        child.expect(PROMPT)
        child.sendline("/cost")
        child.expect("waiting on the model")
        child.expect(PROMPT)
        child.sendline("/nope")
        child.expect("unknown command /nope")
        child.expect(PROMPT)
        assert finish(child) == 0
        users = [m["content"] for m in server.requests[1]["messages"] if m["role"] == "user"]
        assert users == ["remember the number 7", "what number?"]
