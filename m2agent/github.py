"""Publishing a CI fix: push the branch, open (or update) the pull request through the GitHub
REST API, and comment on the commit whose tests failed. Idempotent: a second run for the same
branch updates the existing pull request instead of opening another."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from git import GitCommandError, Repo

from m2agent.errors import BackendError, UsageError
from m2agent.issue_source import github_repository
from m2agent.settings import Settings


def repository_name(settings: Settings, workspace: Path) -> str:
    if settings.github_repository:
        return settings.github_repository
    owner, name = github_repository(workspace)
    return f"{owner}/{name}"


def is_untrusted_fork(settings: Settings) -> bool:
    """Whether this Actions run is for a pull request from a fork (its code is untrusted)."""
    if not settings.github_event_path:
        return False
    try:
        event = json.loads(Path(settings.github_event_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    head = ((event.get("pull_request") or {}).get("head") or {}).get("repo") or {}
    return bool(head.get("fork"))


def push_branch(workspace: Path, branch: str, remote: str = "origin") -> None:
    try:
        Repo(workspace).git.push("--force", remote, f"{branch}:{branch}")
    except GitCommandError as e:
        raise UsageError(f"git push failed: {e.stderr.strip() or e}") from e


class GitHubClient:
    def __init__(self, settings: Settings, repository: str) -> None:
        if not settings.github_token:
            raise UsageError("--pr needs GITHUB_TOKEN (a token that may open pull requests)")
        self.repository = repository
        self.base = settings.github_api_url.rstrip("/")
        self.headers = {
            "Authorization": f"Bearer {settings.github_token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        url = f"{self.base}/repos/{self.repository}{path}"
        try:
            response = httpx.request(method, url, headers=self.headers, timeout=30, **kwargs)
        except httpx.HTTPError as e:
            raise BackendError(f"GitHub unreachable ({url}): {e}") from e
        if response.status_code >= 400:
            raise BackendError(
                f"GitHub {method} {path}: HTTP {response.status_code} {response.text[:300]}"
            )
        return response.json() if response.content else None

    def default_branch(self) -> str:
        return str(self._call("GET", "")["default_branch"])

    def open_or_update_pull(self, branch: str, base: str | None, title: str, body: str) -> str:
        """Open a pull request from `branch` into `base` (the repository's default branch when
        None, e.g. on a detached checkout), or update the open one."""
        owner = self.repository.split("/")[0]
        existing = self._call(
            "GET", "/pulls", params={"head": f"{owner}:{branch}", "state": "open"}
        )
        if existing:
            number = existing[0]["number"]
            pull = self._call("PATCH", f"/pulls/{number}", json={"title": title, "body": body})
        else:
            base = base or self.default_branch()
            payload = {"title": title, "head": branch, "base": base, "body": body}
            pull = self._call("POST", "/pulls", json=payload)
        return str(pull.get("html_url", ""))

    def comment_on_commit(self, sha: str, body: str) -> None:
        self._call("POST", f"/commits/{sha}/comments", json={"body": body})
