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


@pytest.mark.skipif(not bwrap.probe().works, reason="needs a working sandbox")
def test_green_suite_has_nothing_to_fix(repo: Path) -> None:
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    done = ci(repo, "--endpoint", "http://127.0.0.1:9/v1", "--model", "unused")
    assert done.returncode == 0, done.stderr
    assert "nothing to fix" in done.stdout
    assert json.loads((repo / "report.json").read_text())["status"] == "green"
    assert not (repo / "m2agent-fix.patch").exists()


@pytest.mark.skipif(not bwrap.probe().works, reason="needs a working sandbox")
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


@pytest.mark.skipif(not bwrap.probe().works, reason="needs a working sandbox")
def test_unfixed_suite_exits_1(repo: Path) -> None:
    shrug = "Hmm.\n</think>\n\nI cannot see the problem."
    with FakeM2Server([shrug] * 3, "split") as server:  # the first answer and 2 retries
        done = ci(repo, "--endpoint", server.url, "--model", "m")
    assert done.returncode == 1
    report = json.loads((repo / "report.json").read_text())
    assert report["status"] == "not_fixed" and report["failing_after"] == ["test_calc.py::test_add"]
    assert "Could not fix" in (repo / "summary.md").read_text()
