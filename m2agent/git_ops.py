"""Committing a fix on a new branch (never the current one), with gitpython."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from git import GitCommandError, InvalidGitRepositoryError, NoSuchPathError, Repo

from m2agent.errors import UsageError


def commit_on_new_branch(workspace: Path, branch: str, files: Sequence[str], message: str) -> str:
    """Create `branch` at HEAD, switch to it (keeping the changes) and commit `files`; return
    the commit id. Refuses an existing branch name."""
    try:
        repo = Repo(workspace)
    except (InvalidGitRepositoryError, NoSuchPathError):
        raise UsageError(f"{workspace} is not a git repository: cannot --commit") from None
    if branch in [head.name for head in repo.heads]:
        raise UsageError(f"branch {branch!r} already exists: choose another --branch")
    if not files:
        raise UsageError("nothing to commit: the session changed no files")
    reader = repo.config_reader()
    identity = {}
    if not reader.has_option("user", "name"):
        identity["GIT_AUTHOR_NAME"] = identity["GIT_COMMITTER_NAME"] = "m2agent"
    if not reader.has_option("user", "email"):
        identity["GIT_AUTHOR_EMAIL"] = identity["GIT_COMMITTER_EMAIL"] = "m2agent@localhost"
    try:
        repo.git.checkout("-b", branch)
        repo.git.add("-A", "--", *files)
        with repo.git.custom_environment(**identity):
            repo.git.commit("-m", message, "--", *files)
    except GitCommandError as e:
        raise UsageError(f"git failed while committing: {e.stderr.strip() or e}") from e
    return repo.head.commit.hexsha
