"""Snapshots of the workspace, for undo: every change a tool (a shell command included) made,
reversible. A private git object store outside the user's `.git` (their index, HEAD, branches
and stash are never touched) holds one commit per snapshot under refs/m2agent/; a private
index keeps snapshots incremental (unchanged files are not re-hashed). Untracked files are
included, ignored files are not."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REF_PREFIX = "refs/m2agent/snapshots/"


class CheckpointError(RuntimeError):
    """git failed while snapshotting or restoring; the text says how."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    number: int
    commit: str
    label: str


class Checkpoints:
    def __init__(self, workspace: Path, store: Path) -> None:
        """`store`: a folder for the private repository, outside the workspace (the agent's
        state directory) or inside a protected folder of it."""
        self.workspace, self.store = workspace.resolve(), store

    def snapshot(self, label: str) -> Snapshot:
        """Record the workspace as it is now."""
        self._ensure_store()
        tree = self._tree_of_workspace()
        previous = self.list()
        parents = ["-p", previous[-1].commit] if previous else []
        commit = self._git("commit-tree", tree, *parents, "-m", label).strip()
        number = previous[-1].number + 1 if previous else 1
        self._git("update-ref", f"{REF_PREFIX}{number:06d}", commit)
        return Snapshot(number, commit, label)

    def list(self) -> list[Snapshot]:
        if not (self.store / "HEAD").exists():
            return []
        out = self._git(
            "for-each-ref", "--format=%(refname) %(objectname) %(contents:subject)", REF_PREFIX
        )
        snapshots = []
        for line in out.splitlines():
            ref, commit, *label = line.split(" ", 2)
            snapshots.append(
                Snapshot(int(ref.rsplit("/", 1)[1]), commit, label[0] if label else "")
            )
        return sorted(snapshots, key=lambda s: s.number)

    def restore(self, number: int) -> Snapshot:
        """Make the workspace exactly as in snapshot `number`: deleted files come back, files
        created since go away (ignored files are left alone)."""
        snapshot = next((s for s in self.list() if s.number == number), None)
        if snapshot is None:
            raise CheckpointError(f"no snapshot {number}")
        self._tree_of_workspace()  # the index now lists every current file, new ones included
        self._git("read-tree", "-u", "--reset", f"{snapshot.commit}^{{tree}}")
        return snapshot

    def diff(self, number: int) -> str:
        """What changed in the workspace since snapshot `number` (a unified diff)."""
        snapshot = next((s for s in self.list() if s.number == number), None)
        if snapshot is None:
            raise CheckpointError(f"no snapshot {number}")
        tree = self._tree_of_workspace()
        return self._git("diff", "--no-color", "--no-ext-diff", f"{snapshot.commit}^{{tree}}", tree)

    def changed_since(self, number: int) -> bool:
        """Whether the workspace differs from snapshot `number` (ignored files aside)."""
        snapshot = next((s for s in self.list() if s.number == number), None)
        if snapshot is None:
            raise CheckpointError(f"no snapshot {number}")
        tree = self._git("rev-parse", f"{snapshot.commit}^{{tree}}").strip()
        return tree != self._tree_of_workspace()

    def drop(self, number: int) -> None:
        """Forget snapshot `number` (a step that changed nothing is not an undo point)."""
        self._git("update-ref", "-d", f"{REF_PREFIX}{number:06d}")

    def _tree_of_workspace(self) -> str:
        self._git("add", "-A", "--ignore-errors", ".")
        return self._git("write-tree").strip()

    def _ensure_store(self) -> None:
        if (self.store / "HEAD").exists():
            return
        self.store.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["git", "init", "--bare", "-q", str(self.store)], check=True, capture_output=True
        )
        info = self.store / "info"
        info.mkdir(exist_ok=True)
        (info / "exclude").write_text("/.m2agent/\n/.git/\n", encoding="utf-8")

    def _git(self, *args: str) -> str:
        env = {
            **os.environ,
            "GIT_DIR": str(self.store),
            "GIT_WORK_TREE": str(self.workspace),
            "GIT_INDEX_FILE": str(self.store / "m2agent-index"),
            "GIT_AUTHOR_NAME": "m2agent",
            "GIT_AUTHOR_EMAIL": "m2agent@localhost",
            "GIT_COMMITTER_NAME": "m2agent",
            "GIT_COMMITTER_EMAIL": "m2agent@localhost",
        }
        done = subprocess.run(
            ["git", "-c", "core.autocrlf=false", "-c", "core.safecrlf=false", *args],
            cwd=self.workspace, env=env, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise CheckpointError(f"git {args[0]} failed: {done.stderr.strip()[:500]}")
        return done.stdout
