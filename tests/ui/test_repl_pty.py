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


def spawn(repo: Path, server: FakeM2Server | None, *extra: str) -> pexpect.spawn:
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    sandbox = [] if bwrap.probe().works else ["--sandbox", "off"]
    model = ["--endpoint", server.url, "--model", "m"] if server is not None else []
    child = pexpect.spawn(
        sys.executable,
        ["-m", "m2agent", *model, *sandbox, *extra],
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


def edit(path: str, old: str, new: str, why: str = "Edit.") -> str:
    return (
        f'{why}\n</think>\n\n<minimax:tool_call>\n<invoke name="Edit">\n'
        f'<parameter name="file_path">{path}</parameter>\n'
        f'<parameter name="old_string">{old}</parameter>\n'
        f'<parameter name="new_string">{new}</parameter>\n</invoke>\n</minimax:tool_call>'
    )


def bash(command: str) -> str:
    return (
        'Run.\n</think>\n\n<minimax:tool_call>\n<invoke name="Bash">\n'
        f'<parameter name="command">{command}</parameter>\n</invoke>\n</minimax:tool_call>'
    )


def test_undo_reverts_everything_the_last_message_changed(repo: Path, cleanup: list) -> None:
    (repo / "notes.txt").write_text("first\n")
    turns = [
        edit("notes.txt", "first", "second"),
        "Ok.\n</think>\n\nNotes updated.",
        edit("calc.py", "return a - b", "return a + b"),
        bash("echo built > build.log"),  # a later step of the same turn, after the fix
        "Ok.\n</think>\n\nFixed and built.",
    ]
    with FakeM2Server(turns, "split") as server:
        child = spawn(repo, server, "--mode", "auto")
        cleanup.append(child)
        child.sendline("update the notes")
        child.expect("Notes updated.")
        child.expect(PROMPT)
        child.sendline("fix add and build")
        child.expect("Fixed and built.")
        child.expect(PROMPT)
        assert (repo / "build.log").exists()
        child.sendline("/checkpoints")
        child.expect("before step 2")
        child.expect(PROMPT)
        child.sendline("/undo")
        child.expect("restored the workspace to before: fix add and build")
        child.expect(PROMPT)
        # The whole second message is gone (the edit and the build), the first one stays.
        assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"
        assert not (repo / "build.log").exists()
        assert (repo / "notes.txt").read_text() == "second\n"
        child.sendline("/undo")
        child.expect("restored the workspace to before: update the notes")
        child.expect(PROMPT)
        assert (repo / "notes.txt").read_text() == "first\n"
        child.sendline("/undo")
        child.expect("nothing to undo")
        child.expect(PROMPT)
        assert finish(child) == 0


def test_edit_approval_shows_the_diff_first_and_takes_one_key(repo: Path, cleanup: list) -> None:
    turns = [edit("calc.py", "return a - b", "return a + b"), "Ok.\n</think>\n\nLeft it."]
    with FakeM2Server(turns, "split") as server:
        child = spawn(repo, server, "--mode", "ask")
        cleanup.append(child)
        child.sendline("fix add")
        child.expect("Edit changes files")
        child.expect(r"-    return a - b")
        child.expect(r"\+    return a \+ b")
        child.expect("Allow\\?")
        child.send("n")  # one key, no Enter
        child.expect("Left it.")
        child.expect(PROMPT)
        assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"
        refused = next(m for m in server.requests[1]["messages"] if m["role"] == "tool")
        assert "the user declined" in refused["content"]
        assert finish(child) == 0


def test_the_repl_survives_a_failing_endpoint_and_switches_model(repo: Path, cleanup: list) -> None:
    with FakeM2Server(["Hi.\n</think>\n\nBack in business."], "split") as server:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "m2agent", "--endpoint", "http://127.0.0.1:9/v1", "--model", "m",
             *([] if bwrap.probe().works else ["--sandbox", "off"])],
            cwd=str(repo), env={**os.environ, "TERM": "xterm-256color"}, dimensions=(30, 100),
            encoding="utf-8", timeout=60,
        )  # fmt: skip
        cleanup.append(child)
        child.expect(PROMPT)
        child.sendline("hello?")
        child.expect("http://127.0.0.1:9/v1/chat/completions: connection failed")
        child.expect("the session is kept")
        child.expect(PROMPT)
        child.sendline(f"/model {server.url} m")
        child.expect("model: m via openai")
        child.expect(PROMPT)
        child.sendline("and now?")
        child.expect("Back in business.")
        child.expect(PROMPT)
        users = [m["content"] for m in server.requests[0]["messages"] if m["role"] == "user"]
        assert users == ["hello?", "and now?"]  # the session kept the failed turn's message
        assert finish(child) == 0


def test_the_repl_starts_without_a_model_and_says_how_to_set_one(repo: Path, cleanup: list) -> None:
    with FakeM2Server(["Hi.\n</think>\n\nConfigured now."], "split") as server:
        child = spawn(repo, None)
        cleanup.append(child)
        child.expect(PROMPT)
        child.sendline("anyone there?")
        child.expect("No model is configured")
        child.expect(PROMPT)
        child.sendline(f"/model {server.url} m")
        child.expect("model: m via openai")
        child.expect(PROMPT)
        child.sendline("now?")
        child.expect("Configured now.")
        child.expect(PROMPT)
        assert finish(child) == 0


def test_fix_on_a_terminal_asks_with_the_preview_and_one_key(repo: Path) -> None:
    turns = [edit("calc.py", "return a - b", "return a + b"), "Ok.\n</think>\n\nFixed."]
    with FakeM2Server(turns, "split") as server:
        child = pexpect.spawn(
            sys.executable,
            ["-m", "m2agent", "fix", "fix add", "--endpoint", server.url, "--model", "m",
             "--test-cmd", "true", *([] if bwrap.probe().works else ["--sandbox", "off"])],
            cwd=str(repo), env={**os.environ, "TERM": "xterm-256color"}, dimensions=(30, 100),
            encoding="utf-8", timeout=60,
        )  # fmt: skip
        child.expect("Edit changes files: calc.py")
        child.expect(r"\+    return a \+ b")
        child.expect("Allow\\?")
        child.send("y")
        child.expect("fixed: `true` passes after the change")
        child.expect(pexpect.EOF)
        child.close()
    assert child.exitstatus == 0
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
