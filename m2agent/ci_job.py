"""`m2agent ci`: reproduce failing tests in the sandbox, let the agent fix them, verify the same
command passes, and write the results: a patch, a JSON report and a Markdown summary (the body
of a pull request). Exit codes: 0 green (already, or after the fix), 1 could not fix, 2 usage,
3 sandbox unavailable, 4 model or endpoint error. Takes an event sink; imports nothing from
`ui/`."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2agent.errors import UsageError
from m2agent.fix import Sink, run_fix
from m2agent.runtime import build_runtime
from m2agent.settings import Settings
from m2agent.tools.files import atomic_write
from m2agent.tools.run_tests import detect_test_command, run_tests

TASK = """The test command `{command}` fails in this repository. Find the cause and fix the code
so that it passes. Do not delete, skip or weaken tests, and keep the rest of the suite passing.

{summary}"""


@dataclass(frozen=True, slots=True)
class CiReport:
    status: str  # "green" | "fixed" | "not_fixed"
    test_command: str
    failing_before: list[str]
    failing_after: list[str]
    files: list[str] = field(default_factory=list)
    steps: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    session: str | None = None
    answer: str = ""

    @property
    def exit_code(self) -> int:
        return 1 if self.status == "not_fixed" else 0

    def markdown(self) -> str:
        title = {"green": "Tests already pass", "fixed": "Fix for failing tests",
                 "not_fixed": "Could not fix the failing tests"}[self.status]  # fmt: skip
        lines = [f"## m2agent: {title}", "", f"Test command: `{self.test_command}`", ""]
        if self.failing_before:
            lines += ["Failing before:", *[f"- `{t}`" for t in self.failing_before], ""]
        if self.status != "green":
            after = ", ".join(f"`{t}`" for t in self.failing_after) or "none"
            lines += [f"Failing after: {after}", ""]
        if self.files:
            lines += ["Files changed:", *[f"- `{f}`" for f in self.files], ""]
        if self.answer:
            lines += ["What the agent says:", "", self.answer.strip(), ""]
        lines.append(
            f"_{self.steps} steps, {self.prompt_tokens} prompt / {self.completion_tokens} output "
            f"tokens, {self.seconds:.0f} s_"
        )
        return "\n".join(lines) + "\n"


def run_ci(
    settings: Settings,
    workspace: Path,
    *,
    test_cmd: str | None,
    patch_path: Path,
    report_path: Path | None,
    summary_path: Path | None,
    sink: Sink,
) -> CiReport:
    started = time.monotonic()
    command = test_cmd or detect_test_command(workspace)
    if not command:
        raise UsageError("no test command found here: pass --test-cmd 'pytest -q'")
    runtime = build_runtime(settings, workspace, None, mode="auto")  # SandboxError if none
    before = run_tests(runtime.runner, command)
    if before.passed:
        report = CiReport("green", command, [], [], seconds=round(time.monotonic() - started, 2))
    else:
        task = TASK.format(command=command, summary=before.summary)
        result = run_fix(
            settings, workspace, task, sink=sink, mode="auto", test_cmd=command, before=before,
            runtime=runtime,
        )  # fmt: skip
        report = CiReport(
            "fixed" if result.status == "fixed" else "not_fixed",
            command,
            result.failing_before,
            result.failing_after,
            result.files_changed,
            result.steps,
            result.prompt_tokens,
            result.completion_tokens,
            round(time.monotonic() - started, 2),
            result.session,
            result.answer,
        )
        if result.undo_point is not None:
            atomic_write(patch_path, runtime.checkpoints.diff(result.undo_point))
    if report_path is not None:
        atomic_write(report_path, json.dumps(_report_dict(report), indent=2) + "\n")
    if summary_path is not None:
        atomic_write(summary_path, report.markdown())
    return report


def _report_dict(report: CiReport) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(report)


def publish_fix(
    settings: Settings,
    workspace: Path,
    report: CiReport,
    branch: str,
    *,
    push: bool,
    pr: bool,
    allow_fork: bool,
) -> str | None:
    """Commit the fix on a new `branch`; with `push`/`pr`, push it and open (or update) the pull
    request, commenting on the failing commit. Returns the pull request's URL with `pr`."""
    from git import Repo

    from m2agent.git_ops import commit_on_new_branch

    repo = Repo(workspace)
    failed_sha = repo.head.commit.hexsha
    base = None if repo.head.is_detached else repo.active_branch.name
    sha = commit_on_new_branch(
        workspace, branch, report.files, f"m2agent: fix `{report.test_command}`"
    )
    print(f"committed {sha[:12]} on {branch}", file=sys.stderr)
    if not (push or pr):
        return None
    from m2agent.github import GitHubClient, is_untrusted_fork, push_branch, repository_name

    if is_untrusted_fork(settings) and not allow_fork:
        raise UsageError("refusing to push for a fork's pull request (pass --allow-fork)")
    push_branch(workspace, branch)
    print(f"pushed {branch}", file=sys.stderr)
    if not pr:
        return None
    client = GitHubClient(settings, repository_name(settings, workspace))
    title = f"m2agent: fix failing tests ({report.test_command})"
    url = client.open_or_update_pull(branch, base, title, report.markdown())
    client.comment_on_commit(failed_sha, f"m2agent proposed a fix: {url}")
    return url
