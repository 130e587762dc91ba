"""`m2agent fix` end to end: a real git repository with a failing test, a loopback server playing
scripted M2 turns in each serving style, the real CLI in a subprocess, real sandbox. Checks what
the server *received*: all earlier reasoning verbatim in that server's style, every tool call
answered once, the tools offered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from model_server import FakeM2Server
from stream_json_shape import check_stream

from m2agent.tools.sandbox import bwrap

BUGGY = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
STYLES = ["append_think", "split", "raw", "completions", "anthropic"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text(BUGGY)
    (root / "test_calc.py").write_text(TEST)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def verify_command() -> str:
    return f"{sys.executable} -m pytest -q -p no:cacheprovider"


def script() -> list[str]:
    return [
        "The add test fails: add() subtracts. Fix it.\n</think>\n\nFixing add().\n"
        '<minimax:tool_call>\n<invoke name="Edit">\n'
        '<parameter name="file_path">calc.py</parameter>\n'
        '<parameter name="old_string">return a - b</parameter>\n'
        '<parameter name="new_string">return a + b</parameter>\n</invoke>\n</minimax:tool_call>',
        "Now run the tests.\n</think>\n\n<minimax:tool_call>\n"
        f'<invoke name="Bash">\n<parameter name="command">{verify_command()}</parameter>\n'
        "</invoke>\n</minimax:tool_call>",
        "They pass.\n</think>\n\nFixed add(): it subtracted instead of adding.",
    ]


def run_cli(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m2agent", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )


def sandbox_flag() -> list[str]:
    return [] if bwrap.probe().works else ["--sandbox", "off"]


@pytest.mark.parametrize("style", STYLES)
def test_fix_verified_and_reasoning_kept(repo: Path, style: str) -> None:
    api = {"completions": "completions", "anthropic": "anthropic"}.get(style, "openai")
    with FakeM2Server(script(), style) as server:
        done = run_cli(
            repo, "fix", "test_add fails", "--endpoint", server.url, "--api", api,
            "--model", "fake-m2", "--yes", "--json", "--test-cmd", verify_command(),
            *sandbox_flag(),
        )  # fmt: skip
        requests = server.requests
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "fixed" and result["verified"] is True
    assert result["files_changed"] == ["calc.py"]
    assert result["tests_passed_before"] is False
    assert (repo / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert len(requests) == 3

    reasoning = ["The add test fails: add() subtracts. Fix it.", "Now run the tests."]
    if style == "anthropic":
        final = requests[-1]["messages"]
        thinking = [
            b["thinking"]
            for m in final
            if m["role"] == "assistant"
            for b in m["content"]
            if b["type"] == "thinking"
        ]
        assert thinking == reasoning
        uses = [
            b["id"]
            for m in final
            if m["role"] == "assistant"
            for b in m["content"]
            if b["type"] == "tool_use"
        ]
        results = [
            b["tool_use_id"]
            for m in final
            if m["role"] == "user" and isinstance(m["content"], list)
            for b in m["content"]
        ]
        assert sorted(uses) == sorted(results) and len(set(results)) == 2
    elif style == "completions":
        for i, prompt in enumerate(r["prompt"] for r in requests):
            for earlier in reasoning[:i]:
                assert f"<think>\n{earlier}\n</think>" in prompt
        last = requests[-1]["prompt"]
        assert last.count("<response>") == 2  # both tool calls answered, once each
    else:
        assert [t["function"]["name"] for t in requests[0]["tools"]] == [
            "Read", "Write", "Edit", "Bash", "Grep", "Glob", "TodoWrite",
        ]  # fmt: skip
        final = requests[-1]["messages"]
        assistants = [m for m in final if m["role"] == "assistant"]
        for message, earlier in zip(assistants, reasoning, strict=True):
            if style == "split":
                assert message["reasoning_content"] == earlier
            else:
                assert message["content"].startswith(f"<think>\n{earlier}\n</think>")
        call_ids = [c["id"] for m in assistants for c in m.get("tool_calls", [])]
        answered = [m["tool_call_id"] for m in final if m["role"] == "tool"]
        assert sorted(call_ids) == sorted(answered) and len(set(answered)) == 2


def test_undo_restores_a_session_that_deleted_files(repo: Path) -> None:
    (repo / "src").mkdir()
    (repo / "src" / "keep.py").write_text("precious = True\n")
    turns = [
        'Clean up.\n</think>\n\n<minimax:tool_call>\n<invoke name="Bash">\n'
        '<parameter name="command">rm -rf src calc.py</parameter>\n</invoke>\n</minimax:tool_call>',
        "Done.\n</think>\n\nRemoved everything.",
    ]
    with FakeM2Server(turns, "split") as server:
        done = run_cli(
            repo, "fix", "clean up", "--endpoint", server.url, "--model", "m", "--yes",
            "--test-cmd", "true", *sandbox_flag(),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert not (repo / "src").exists() and not (repo / "calc.py").exists()
    listed = run_cli(repo, "sessions")
    assert "1 undo point" in listed.stdout and "clean up" in listed.stdout
    undone = run_cli(repo, "undo", "--yes")
    assert undone.returncode == 0, undone.stderr
    assert (repo / "src" / "keep.py").read_text() == "precious = True\n"
    assert (repo / "calc.py").read_text() == BUGGY


def test_usage_and_endpoint_errors(repo: Path) -> None:
    missing = run_cli(repo, "fix", "x")
    assert missing.returncode == 2 and "no model: pass --endpoint URL" in missing.stderr
    down = run_cli(
        repo,
        "fix",
        "x",
        "--endpoint",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--yes",
        "--test-cmd",
        "true",
        *sandbox_flag(),
    )
    assert down.returncode == 4 and "failed 4 times" in down.stderr


def test_github_issue_and_commit_on_a_new_branch(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class GitHub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(f"{self.path} {self.headers.get('Authorization')}")
            body = json.dumps({"title": "add() is broken", "body": "1 + 2 should be 3"}).encode()
            self.send_response(200 if self.path == "/repos/octo/calc/issues/7" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    github = ThreadingHTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=github.serve_forever, daemon=True).start()
    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{github.server_address[1]}")
    monkeypatch.setenv("GITHUB_TOKEN", "ghs-test")
    subprocess.run(
        ["git", "remote", "add", "origin", "https://github.com/octo/calc.git"], cwd=repo, check=True
    )
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@x"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    try:
        with FakeM2Server(script(), "split") as server:
            done = run_cli(
                repo, "fix", "#7", "--endpoint", server.url, "--model", "m", "--yes", "--json",
                "--test-cmd", verify_command(), "--branch", "m2agent/fix-7", "--commit",
                *sandbox_flag(),
            )  # fmt: skip
            first_user = next(m for m in server.requests[0]["messages"] if m["role"] == "user")
    finally:
        github.shutdown()
    assert done.returncode == 0, done.stderr
    assert seen == ["/repos/octo/calc/issues/7 Bearer ghs-test"]
    assert (
        "add() is broken" in first_user["content"] and "1 + 2 should be 3" in first_user["content"]
    )
    log = subprocess.run(
        ["git", "log", "--format=%s", "-n", "2", "m2agent/fix-7"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert log.stdout.splitlines() == ["m2agent: #7", "init"]
    branch = subprocess.run(
        ["git", "branch", "--show-current"], cwd=repo, capture_output=True, text=True
    )
    assert branch.stdout.strip() == "m2agent/fix-7"
    changed = subprocess.run(
        ["git", "show", "--name-only", "--format=", "HEAD"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert changed.stdout.split() == ["calc.py"]


def test_embedded_engine_is_started_and_reused(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No endpoint and no --model: the weights in the Hugging Face cache start the embedded
    engine; naming the same checkpoint with --model reuses it."""
    from m2agent.engine.models.tiny import write_tiny_checkpoint

    snapshot = tmp_path / "hub" / "models--MiniMaxAI--MiniMax-M2" / "snapshots" / "abc123"
    write_tiny_checkpoint(snapshot)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    args = ["fix", "say hi", "--yes", "--json", "--test-cmd", "true", "--max-steps", "1",
            "--max-tokens", "8", *sandbox_flag()]  # fmt: skip
    first = run_cli(repo, *args)
    assert first.returncode in (0, 1), first.stderr
    assert f"found MiniMax-M2 weights at {snapshot}; serving them on cpu" in first.stderr
    assert "starting the embedded engine" in first.stderr
    second = run_cli(repo, *args, "--model", str(snapshot))
    assert "starting the embedded engine" not in second.stderr  # reused
    result = json.loads(second.stdout)
    assert result["steps"] == 1 and result["prompt_tokens"] > 1000
    engines = list(
        (Path(os.environ["HOME"]) / "xdg_state_home" / "m2agent" / "engines").glob("*.json")
    )
    pid = json.loads(engines[0].read_text())["pid"]
    os.kill(pid, signal.SIGTERM)


def test_continue_a_session_with_its_whole_history(repo: Path) -> None:
    first = ["Look first.\n</think>\n\nI looked; add() is wrong."]
    second = ["Fixing now.\n</think>\n\nI will not, actually."]
    with FakeM2Server(first, "split") as server:
        done = run_cli(repo, "fix", "look at add()", "--endpoint", server.url, "--model", "m",
                       "--yes", "--test-cmd", "true", *sandbox_flag())  # fmt: skip
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    assert done.returncode == 1 and "not fixed: nothing changed" in done.stderr, done.stderr
    with FakeM2Server(second, "split", port=port) as server:
        again = run_cli(repo, "fix", "now fix it", "--continue", "--endpoint", server.url,
                        "--model", "m", "--yes", "--test-cmd", "true", *sandbox_flag())  # fmt: skip
        sent = server.requests[0]["messages"]
    assert again.returncode == 1, again.stderr
    users = [m["content"] for m in sent if m["role"] == "user"]
    assert users[0].startswith("look at add()") and users[1].startswith("now fix it")
    assistant = next(m for m in sent if m["role"] == "assistant")
    # The endpoint's reasoning style was remembered from the first process.
    assert assistant["content"] == "I looked; add() is wrong."
    assert assistant["reasoning_content"] == "Look first."
    sessions = run_cli(repo, "sessions").stdout.strip().splitlines()
    assert len(sessions) == 1  # continued, not a new session
    missing = run_cli(
        repo, "fix", "x", "--resume", "nope", "--endpoint", server.url, "--model", "m", "--yes"
    )
    assert missing.returncode == 2 and "no session 'nope'" in missing.stderr


def test_tests_already_passing_are_reported(repo: Path) -> None:
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    with FakeM2Server(["Nothing to do.\n</think>\n\nThe tests pass already."], "split") as server:
        done = run_cli(
            repo, "fix", "check add()", "--endpoint", server.url, "--model", "m", "--yes",
            "--json", "--test-cmd", verify_command(), *sandbox_flag(),
        )  # fmt: skip
    assert done.returncode == 1  # `fix` that changed nothing did not fix anything
    assert "already passes before any change" in done.stderr
    result = json.loads(done.stdout)
    assert result["tests_passed_before"] is True
    assert (result["status"], result["reason"]) == ("not_fixed", "nothing changed")


def test_stream_json_prints_one_event_per_line(repo: Path) -> None:
    with FakeM2Server(script(), "split") as server:
        done = run_cli(
            repo, "fix", "fix add", "--endpoint", server.url, "--model", "m", "--yes",
            "--output-format", "stream-json", "--test-cmd", verify_command(), *sandbox_flag(),
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = check_stream(done.stdout)  # Claude Code's shape, line by line
    kinds = [line["type"] for line in lines]
    assert kinds.count("user") == 2 and kinds[-1] == "result"
    assert lines[-1]["m2agent"]["verified"] is True and lines[-1]["subtype"] == "success"
    reasoning = "".join(
        block["thinking"]
        for line in lines
        if line["type"] == "assistant"
        for block in line["message"]["content"]
        if block["type"] == "thinking"
    )
    assert "The add test fails" in reasoning
    # Undo by turn: the fix's last step was the test run, and `undo` still reverts the edit.
    assert (repo / "calc.py").read_text() != BUGGY
    undone = run_cli(repo, "undo", "--yes")
    assert undone.returncode == 0 and "undoing 'fix add" in undone.stdout, undone.stderr
    assert (repo / "calc.py").read_text() == BUGGY
    again = run_cli(repo, "undo", "--yes")
    assert again.returncode == 0 and "nothing to undo" in again.stdout


def test_doctor(repo: Path) -> None:
    bare = run_cli(repo, "doctor")
    assert bare.returncode == 1
    assert (
        "[MISSING] model: no endpoint" in bare.stdout and "fix: pass --endpoint URL" in bare.stdout
    )
    assert "] sandbox:" in bare.stdout and "] git: git version" in bare.stdout
    with FakeM2Server(["Fine.\n</think>\n\nOK"], "split") as server:
        good = run_cli(repo, "doctor", "--endpoint", server.url, "--model", "fake-m2")
    assert "reasoning in the `reasoning_content` field" in good.stdout, good.stdout
    if bwrap.probe().works:
        assert good.returncode == 0, good.stdout
    down = run_cli(repo, "doctor", "--endpoint", "http://127.0.0.1:9/v1")
    assert down.returncode == 1 and "unreachable" in down.stdout


def test_background_engine_returns_at_once_then_serves(tmp_path: Path) -> None:
    import time

    from m2agent.agent.messages import UserMessage
    from m2agent.backends.base import TurnDone
    from m2agent.backends.embedded import BackgroundEngine
    from m2agent.engine.models.tiny import TinySpec, write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny", TinySpec(max_positions=4096))
    started = time.monotonic()
    backend = BackgroundEngine(checkpoint, tmp_path / "state", max_tokens=4)
    assert time.monotonic() - started < 1.0
    events = list(backend.stream([UserMessage("hi")], []))
    assert backend.ready and isinstance(events[-1], TurnDone)
    engines = list((tmp_path / "state" / "engines").glob("*.json"))
    os.kill(json.loads(engines[0].read_text())["pid"], signal.SIGTERM)


def test_embedded_engine_over_two_processes_is_started_once_per_tp(tmp_path: Path) -> None:
    """`--tp 2`: the engine runs split over two ranks (CPU here); asking again for tp 2 reuses
    it, asking for tp 1 starts a separate engine."""
    import httpx

    from m2agent.backends.embedded import ensure_engine
    from m2agent.engine.models.tiny import TinySpec, write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny", TinySpec(max_positions=4096))
    state = tmp_path / "state"
    pids = []
    try:
        url, name = ensure_engine(checkpoint, state, tp=2)
        records = [json.loads(f.read_text()) for f in (state / "engines").glob("*.json")]
        pids = [r["pid"] for r in records]
        assert [r["tp"] for r in records] == [2] and name == "tiny"
        reply = httpx.post(
            f"{url}/completions", json={"model": name, "prompt": "hi", "max_tokens": 4}, timeout=60
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 4
        log = next((state / "engines").glob("*.log")).read_text()
        assert "tensor-parallel 2" in log
        assert ensure_engine(checkpoint, state, tp=2)[0] == url
        single, _ = ensure_engine(checkpoint, state, tp=1)
        pids = [json.loads(f.read_text())["pid"] for f in (state / "engines").glob("*.json")]
        assert single != url and len(pids) == 2
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
