"""Where `m2agent fix` gets its task: text, `@file`, or a GitHub issue (a URL, or `#N` in a
repository whose remote is on GitHub) read through the REST API."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from git import InvalidGitRepositoryError, NoSuchPathError, Repo

from m2agent.errors import BackendError, UsageError
from m2agent.settings import Settings

_URL = re.compile(r"https?://github\.com/([^/\s]+)/([^/\s]+)/issues/(\d+)/?$")
_REMOTE = re.compile(r"github\.com[:/]([^/\s]+)/([^/\s]+?)(?:\.git)?/?$")


def resolve_task(issue: str, workspace: Path, settings: Settings) -> str:
    if not issue.strip():
        raise UsageError("the issue text is empty")
    if issue.startswith("@"):
        file = (workspace / issue[1:]).resolve()
        if not file.is_file():
            raise UsageError(f"{issue[1:]}: no such file")
        return file.read_text(encoding="utf-8", errors="replace")
    match = _URL.match(issue.strip())
    if match:
        return fetch_github_issue(settings, match.group(1), match.group(2), int(match.group(3)))
    number = re.fullmatch(r"#(\d+)", issue.strip())
    if number:
        owner, repo = github_repository(workspace)
        return fetch_github_issue(settings, owner, repo, int(number.group(1)))
    return issue


def github_repository(workspace: Path) -> tuple[str, str]:
    """(owner, name) from the repository's GitHub remote."""
    try:
        repo = Repo(workspace, search_parent_directories=True)
    except (InvalidGitRepositoryError, NoSuchPathError):
        raise UsageError("#N needs a git repository with a GitHub remote") from None
    for remote in repo.remotes:
        for url in remote.urls:
            match = _REMOTE.search(url)
            if match:
                return match.group(1), match.group(2)
    raise UsageError("no GitHub remote in this repository: use the issue's full URL")


def fetch_github_issue(settings: Settings, owner: str, repo: str, number: int) -> str:
    url = f"{settings.github_api_url.rstrip('/')}/repos/{owner}/{repo}/issues/{number}"
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
    if settings.github_token:
        headers["Authorization"] = f"Bearer {settings.github_token}"
    try:
        response = httpx.get(url, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        raise BackendError(f"could not reach GitHub ({url}): {e}") from e
    if response.status_code == 404:
        raise UsageError(f"{owner}/{repo}#{number}: no such issue (or no access: set GITHUB_TOKEN)")
    if response.status_code >= 400:
        raise BackendError(f"GitHub answered HTTP {response.status_code} for {url}")
    data = response.json()
    title, body = data.get("title") or "", data.get("body") or ""
    return f"GitHub issue {owner}/{repo}#{number}: {title}\n\n{body}".strip()
