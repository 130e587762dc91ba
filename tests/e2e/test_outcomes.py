"""Honest results and errors a user can act on, end to end through the real CLI and the loopback
model server: `fixed` only when a test command passed after a change; unverified, not fixed and
answered told apart with their exit codes; a final JSON result on every outcome."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_server import FakeM2Server

from m2agent.tools.sandbox import bwrap

pytestmark = pytest.mark.timeout(180)
WRITE = (
    'Write it.\n</think>\n\n<minimax:tool_call>\n<invoke name="Write">\n'
    '<parameter name="file_path">notes.txt</parameter>\n'
    '<parameter name="content">changed\n</parameter>\n</invoke>\n</minimax:tool_call>'
)
DONE = "Done.\n</think>\n\nI changed notes.txt."
ANSWER = "Easy.\n</think>\n\nIt prints hello."


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository without any test layout m2agent recognises."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "notes.txt").write_text("hello\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def m2agent(repo: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    sandbox = [] if bwrap.probe().works else ["--sandbox", "off"]
    return subprocess.run(
        [sys.executable, "-m", "m2agent", *args, *sandbox],
        cwd=repo, capture_output=True, text=True, timeout=120, input=stdin,
    )  # fmt: skip


def test_a_change_without_a_test_command_is_unverified_not_fixed(repo: Path) -> None:
    with FakeM2Server([WRITE, DONE], "split") as server:
        done = m2agent(repo, "fix", "change the notes", "--endpoint", server.url, "--model", "m",
                       "--yes", "--json")  # fmt: skip
    assert done.returncode == 5, done.stderr
    result = json.loads(done.stdout)
    assert (result["status"], result["verified"]) == ("unverified", False)
    assert result["files_changed"] == ["notes.txt"] and result["tests_command"] is None
    assert "no test command" in result["reason"] and result["exit_code"] == 5


def test_fix_that_changes_nothing_is_not_fixed(repo: Path) -> None:
    with FakeM2Server([ANSWER], "split") as server:
        done = m2agent(repo, "fix", "what does it print?", "--endpoint", server.url, "--model",
                       "m", "--yes")  # fmt: skip
    assert done.returncode == 1
    assert "not fixed: nothing changed" in done.stderr
    assert done.stdout.strip() == "It prints hello."


def test_a_headless_question_is_answered_with_exit_0(repo: Path) -> None:
    with FakeM2Server([ANSWER], "split") as server:
        done = m2agent(repo, "-p", "what does it print?", "--endpoint", server.url, "--model",
                       "m", "--output-format", "stream-json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.splitlines()[-1])  # Claude Code's result event
    assert (last["type"], last["subtype"], last["result"]) == (
        "result",
        "success",
        "It prints hello.",
    )
    assert last["m2agent"]["status"] == "answered" and last["is_error"] is False


def test_a_headless_change_needing_approval_is_refused_with_the_reason(repo: Path) -> None:
    with FakeM2Server([WRITE, DONE], "split") as server:
        done = m2agent(repo, "-p", "change the notes", "--endpoint", server.url, "--model", "m",
                       "--output-format", "stream-json", stdin="")  # fmt: skip
        sent = server.requests[1]["messages"]
    assert (repo / "notes.txt").read_text() == "hello\n"
    refused = next(m for m in sent if m["role"] == "tool")["content"]
    assert "nobody can approve here" in refused and "--yes" in refused
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[-1]["type"] == "result"
    (denied,) = lines[-1]["permission_denials"]  # as Claude Code lists them
    assert denied["tool_name"] == "Write" and denied["tool_input"]["file_path"] == "notes.txt"


@pytest.mark.parametrize("fmt", ["json", "stream-json"])
def test_an_unreachable_endpoint_still_ends_with_a_json_result_naming_the_url(
    repo: Path, fmt: str
) -> None:
    url = "http://127.0.0.1:9/v1"
    done = m2agent(repo, "fix", "x", "--endpoint", url, "--model", "m", "--yes",
                   "--output-format", fmt, "--test-cmd", "true")  # fmt: skip
    assert done.returncode == 4
    last = json.loads(done.stdout.strip().splitlines()[-1] if fmt == "stream-json" else done.stdout)
    assert (last["type"], last["subtype"], last["is_error"]) == (
        "result", "error_during_execution", True)  # fmt: skip
    assert last["m2agent"]["status"] == "error" and last["m2agent"]["exit_code"] == 4
    assert f"{url}/chat/completions: connection failed" in last["result"]


def test_usage_errors_are_clear_and_early(repo: Path) -> None:
    bogus = m2agent(repo, "--mode", "bogus", "-p", "x")
    assert bogus.returncode == 2 and "Traceback" not in bogus.stderr
    assert "Invalid value for '--mode'" in bogus.stderr
    assert all(f"'{mode}'" in bogus.stderr for mode in ("read-only", "ask", "auto-edit", "auto"))
    schemeless = m2agent(repo, "fix", "x", "--endpoint", "127.0.0.1:8000/v1", "--model", "m",
                         "--json")  # fmt: skip
    assert schemeless.returncode == 2
    assert "is not an http(s) URL" in json.loads(schemeless.stdout)["error"]
    nothing = m2agent(repo, "undo", "--yes")
    assert nothing.returncode == 0 and "nothing to undo" in nothing.stdout
    no_model = m2agent(repo, "fix", "x", "--json")
    assert no_model.returncode == 2 and json.loads(no_model.stdout)["status"] == "error"


def test_serve_and_bench_without_the_engine_extra_say_how_to_install_it(tmp_path: Path) -> None:
    block_torch = (
        "import sys; sys.modules['torch'] = None; sys.argv = ['m2agent'] + sys.argv[1:]; "
        "from m2agent.cli import main; main()"
    )
    for args in (["serve", "--model", str(tmp_path)],
                 ["bench", "latency", "--dummy-config", "minimax-m2"]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-c", block_torch, *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert "pip install 'm2agent[engine]'" in done.stderr
