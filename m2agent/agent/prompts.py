"""The system prompt: who the agent is, how it works, where it is, and the user's and the
repository's own instructions (AGENTS.md, CLAUDE.md: see `instructions.py`)."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

from m2agent.agent import instructions

RULES = """\
You are m2agent, a coding agent working in the user's repository through tools.
How to work:
- Keep a short plan with TodoWrite for anything with more than two steps.
- Read before you edit: use Grep/Glob to find code and Read to see it; change files with Edit
  (exact, unique old_string) or Write.
- Verify: run the tests with Bash after changing code, and fix what fails.
- Commands run in a sandbox: only the workspace is writable, the network is off.
- Be brief. When the task is done, answer with a short summary of what you changed and why."""


def system_prompt(
    workspace: Path,
    today: datetime.date | None = None,
    *,
    user_dir: Path | None = None,
    home: Path | None = None,
) -> str:
    """`user_dir`: where the user's own AGENTS.md / CLAUDE.md live (m2agent's config folder);
    `home`: what `@~/...` imports in them resolve against."""
    today = today or datetime.date.today()
    parts = [RULES, "", "Environment:", f"- working directory: {workspace}"]
    parts.append(f"- OS: {platform.system()} {platform.release()}; date: {today.isoformat()}")
    status = _git_status(workspace)
    if status is not None:
        parts.append(f"- git status:\n{status or '  (clean)'}")
    found = instructions.render(instructions.collect(workspace, user_dir, home))
    if found:
        parts += ["", found]
    return "\n".join(parts)


def _git_status(workspace: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", "status", "--short", "--branch"],
            cwd=workspace,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    lines = done.stdout.splitlines()
    return "\n".join(f"  {line}" for line in lines[:40])
