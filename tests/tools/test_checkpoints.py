"""Undo: snapshots in a private git store restore the workspace byte for byte, even after
`rm -rf`, without touching the user's own git state."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from m2agent.tools.checkpoints import CheckpointError, Checkpoints
from m2agent.tools.sandbox import bwrap
from m2agent.tools.sandbox.policy import SandboxPolicy
from m2agent.tools.shell import CommandRunner


def git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=True
    ).stdout


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file outside .git: content hash and executable bit."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ".git" or path.is_dir():
            continue
        state[str(rel)] = (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mode & 0o111,
        )
    return state


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "src" / "deep").mkdir(parents=True)
    (root / "src" / "app.py").write_text("print('hi')\n")
    (root / "src" / "deep" / "data.bin").write_bytes(bytes(range(256)) * 40)
    (root / "run.sh").write_text("#!/bin/sh\necho run\n")
    (root / "run.sh").chmod(0o755)
    (root / ".gitignore").write_text("*.log\n")
    (root / "debug.log").write_text("ignored\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    git(root, "-c", "user.email=u@x", "-c", "user.name=u", "add", "-A")
    git(root, "-c", "user.email=u@x", "-c", "user.name=u", "commit", "-qm", "init")
    (root / "untracked.txt").write_text("not committed yet\n")
    (root / "src" / "app.py").write_text("print('modified, uncommitted')\n")
    return root


def test_restore_after_rm_rf_byte_for_byte(repo: Path, tmp_path: Path) -> None:
    checkpoints = Checkpoints(repo, tmp_path / "state" / "snapshots.git")
    before = tree_state(repo)
    user_git = (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "status", "--porcelain"),
        git(repo, "ls-files", "-s"),
        git(repo, "branch", "-a"),
        git(repo, "stash", "list"),
    )
    snap = checkpoints.snapshot("before Bash: rm -rf")
    if bwrap.probe().works:  # the real thing: a sandboxed rm -rf of the whole workspace
        CommandRunner(SandboxPolicy.for_workspace(repo), "bwrap").run(
            "rm -rf ./* ./.gitignore; echo new > created.txt"
        )
    else:
        for path in sorted(repo.iterdir()):
            if path.name != ".git":
                subprocess.run(["rm", "-rf", str(path)], check=True)
        (repo / "created.txt").write_text("new\n")
    assert "src/app.py" not in tree_state(repo)
    checkpoints.restore(snap.number)
    after = tree_state(repo)
    expected = {k: v for k, v in before.items() if k != "debug.log"}  # ignored: not in snapshots
    assert {k: v for k, v in after.items() if k != "debug.log"} == expected
    assert "created.txt" not in after
    assert (
        git(repo, "rev-parse", "HEAD"),
        git(repo, "status", "--porcelain"),
        git(repo, "ls-files", "-s"),
        git(repo, "branch", "-a"),
        git(repo, "stash", "list"),
    ) == user_git


def test_snapshots_list_diff_and_work_without_git(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "a.txt").write_text("one\n")
    checkpoints = Checkpoints(root, tmp_path / "store")
    first = checkpoints.snapshot("first")
    (root / "a.txt").write_text("two\n")
    second = checkpoints.snapshot("second")
    assert [(s.number, s.label) for s in checkpoints.list()] == [(1, "first"), (2, "second")]
    assert "-one" in checkpoints.diff(first.number) and "+two" in checkpoints.diff(first.number)
    assert checkpoints.diff(second.number) == ""
    checkpoints.restore(first.number)
    assert (root / "a.txt").read_text() == "one\n"
    with pytest.raises(CheckpointError, match="no snapshot 9"):
        checkpoints.restore(9)
    assert not (root / ".git").exists()


def test_the_store_is_not_in_the_workspace_git(repo: Path, tmp_path: Path) -> None:
    Checkpoints(repo, tmp_path / "store").snapshot("s")
    refs = git(repo, "for-each-ref")
    assert "m2agent" not in refs
    assert not any("m2agent" in p.name for p in (repo / ".git").rglob("*"))
    assert os.listdir(tmp_path / "store")
