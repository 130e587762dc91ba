"""`m2agent ci` end to end: real repository, real sandbox, the loopback fake M2 server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_server import FakeM2Server

from m2agent.tools.sandbox import bwrap

BUGGY = "def add(a, b):\n    return a - b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
PROBE = bwrap.probe()
NEEDS_BWRAP = pytest.mark.skipif(
    not PROBE.works,
    reason=f"`m2agent ci` runs the tests in a sandbox, and none works here (bubblewrap, or "
    f"Landlock as the fallback): {PROBE.diagnosis}. {PROBE.advice} (bash .ci/run installs "
    "bubblewrap)",
)
COMMAND = f"{sys.executable} -m pytest -q -p no:cacheprovider"
FIX = [
    'add() subtracts.\n</think>\n\n<minimax:tool_call>\n<invoke name="Edit">\n'
    '<parameter name="file_path">calc.py</parameter>\n'
    '<parameter name="old_string">return a - b</parameter>\n'
    '<parameter name="new_string">return a + b</parameter>\n</invoke>\n</minimax:tool_call>',
    "Fixed.\n</think>\n\nadd() now adds.",
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "calc.py").write_text(BUGGY)
    (root / "test_calc.py").write_text(TEST)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def ci(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m2agent", "ci", "--test-cmd", COMMAND, "--report", "report.json",
         "--summary", "summary.md", *args],
        cwd=repo, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@NEEDS_BWRAP
def test_green_suite_has_nothing_to_fix(repo: Path) -> None:
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    done = ci(repo, "--endpoint", "http://127.0.0.1:9/v1", "--model", "unused")
    assert done.returncode == 0, done.stderr
    assert "nothing to fix" in done.stdout
    assert json.loads((repo / "report.json").read_text())["status"] == "green"
    assert not (repo / "m2agent-fix.patch").exists()


@NEEDS_BWRAP
def test_failing_suite_is_fixed_with_patch_report_and_summary(repo: Path) -> None:
    with FakeM2Server(FIX, "split") as server:
        done = ci(repo, "--endpoint", server.url, "--model", "m")
        task = server.requests[0]["messages"][1]["content"]
    assert done.returncode == 0, done.stderr
    assert "test_calc.py::test_add" in task
    report = json.loads((repo / "report.json").read_text())
    assert report["status"] == "fixed"
    assert report["failing_before"] == ["test_calc.py::test_add"] and report["failing_after"] == []
    assert report["files"] == ["calc.py"]
    patch = (repo / "m2agent-fix.patch").read_text()
    assert "-    return a - b" in patch and "+    return a + b" in patch
    check = subprocess.run(["git", "apply", "--check", "-R", "m2agent-fix.patch"], cwd=repo)
    assert check.returncode == 0
    summary = (repo / "summary.md").read_text()
    assert "Fix for failing tests" in summary and "`calc.py`" in summary


@NEEDS_BWRAP
def test_unfixed_suite_exits_1(repo: Path) -> None:
    shrug = "Hmm.\n</think>\n\nI cannot see the problem."
    with FakeM2Server([shrug] * 3, "split") as server:  # the first answer and 2 retries
        done = ci(repo, "--endpoint", server.url, "--model", "m")
    assert done.returncode == 1
    report = json.loads((repo / "report.json").read_text())
    assert report["status"] == "not_fixed" and report["failing_after"] == ["test_calc.py::test_add"]
    assert "Could not fix" in (repo / "summary.md").read_text()


@NEEDS_BWRAP
def test_fix_that_breaks_another_test_is_rejected(repo: Path) -> None:
    (repo / "calc.py").write_text(BUGGY + "\n\ndef sub(a, b):\n    return a + (-b)\n")
    (repo / "test_sub.py").write_text(
        "from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n"
    )
    breaking = (
        'Make both add.\n</think>\n\n<minimax:tool_call>\n<invoke name="Edit">\n'
        '<parameter name="file_path">calc.py</parameter>\n'
        '<parameter name="old_string">return a - b\n\n\ndef sub(a, b):\n    return a + (-b)'
        "</parameter>\n"
        '<parameter name="new_string">return a + b\n\n\ndef sub(a, b):\n    return a + b'
        "</parameter>\n</invoke>\n</minimax:tool_call>"
    )
    done_answer = "Done.\n</think>\n\nadd() now adds."
    with FakeM2Server([breaking] + [done_answer] * 3, "split") as server:
        done = ci(repo, "--endpoint", server.url, "--model", "m")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((repo / "report.json").read_text())
    assert report["status"] == "not_fixed"
    assert report["failing_before"] == ["test_calc.py::test_add"]
    assert report["failing_after"] == ["test_sub.py::test_sub"]
    assert "Could not fix" in (repo / "summary.md").read_text()


@NEEDS_BWRAP
def test_push_and_pull_request_idempotent(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    calls: list[tuple[str, str, dict]] = []
    pulls: list[dict] = []

    class GitHub(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            calls.append(("GET", self.path, {}))
            self._reply({"default_branch": "trunk"} if self.path == "/repos/octo/calc" else pulls)

        def _body(self) -> dict:
            return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

        def do_POST(self) -> None:
            body = self._body()
            calls.append(("POST", self.path, body))
            if self.path.endswith("/pulls"):
                pulls.append({"number": 5, "html_url": "https://github.com/octo/calc/pull/5"})
            self._reply(pulls[-1] if pulls else {})

        def do_PATCH(self) -> None:
            calls.append(("PATCH", self.path, self._body()))
            self._reply(pulls[-1])

    server = ThreadingHTTPServer(("127.0.0.1", 0), GitHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("GITHUB_TOKEN", "ghs-test")
    monkeypatch.setenv("GITHUB_REPOSITORY", "octo/calc")
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@x"]
    subprocess.run([*git, "checkout", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    subprocess.run(["git", "remote", "add", "origin", str(remote)], cwd=repo, check=True)
    failing = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    try:
        for _ in range(2):  # the second run for the same failure updates, not duplicates
            subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, check=True)
            subprocess.run(["git", "branch", "-q", "-D", "m2agent/fix"], cwd=repo)
            (repo / "calc.py").write_text(BUGGY)
            with FakeM2Server(FIX, "split") as model:
                done = ci(
                    repo, "--endpoint", model.url, "--model", "m", "--branch", "m2agent/fix", "--pr"
                )
            assert done.returncode == 0, done.stderr
            assert "pull request: https://github.com/octo/calc/pull/5" in done.stdout
    finally:
        server.shutdown()
    kinds = [(method, path.split("?")[0]) for method, path, _ in calls]
    assert kinds.count(("POST", "/repos/octo/calc/pulls")) == 1
    assert kinds.count(("PATCH", "/repos/octo/calc/pulls/5")) == 1
    post = next(
        body for method, path, body in calls if method == "POST" and path.endswith("/pulls")
    )
    assert (
        post["head"] == "m2agent/fix"
        and post["base"] == "main"
        and "Fix for failing tests" in post["body"]
    )
    assert ("POST", f"/repos/octo/calc/commits/{failing}/comments") in kinds
    branches = subprocess.run(
        ["git", "branch", "--list"], cwd=remote, capture_output=True, text=True
    )
    assert "m2agent/fix" in branches.stdout


def test_fork_pull_requests_are_not_pushed(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from m2agent.github import is_untrusted_fork
    from m2agent.settings import Settings

    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"head": {"repo": {"fork": True}}}}))
    assert is_untrusted_fork(Settings(github_event_path=str(event)))
    event.write_text(json.dumps({"pull_request": {"head": {"repo": {"fork": False}}}}))
    assert not is_untrusted_fork(Settings(github_event_path=str(event)))
    assert not is_untrusted_fork(Settings())
