"""`m2agent fix ISSUE` (and `-p`): one headless task as one user turn of a session, verified by
the project's tests. Takes an event sink; imports nothing from `ui/`.

Outcomes and exit codes (`EXIT_CODES`, documented in README and `--help`):
  fixed       0  the workspace changed and the test command passed afterwards
  answered    0  nothing changed and nothing failed: a question answered (`-p` only)
  unverified  5  the workspace changed but no test command was found to verify it
  not_fixed   1  the tests still fail, a budget ran out, or `fix` changed nothing
Errors: 2 usage, 3 sandbox unavailable, 4 model or endpoint, 130 interrupted."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from m2agent.agent.approvals import Mode
from m2agent.agent.events import Notice, TaskDone
from m2agent.agent.loop import Budget, Item
from m2agent.agent.messages import UserMessage
from m2agent.backends.base import ModelBackend
from m2agent.runtime import Runtime, build_backend, build_runtime
from m2agent.settings import Settings
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.run_tests import TestRun, detect_test_command, run_tests

VERIFY_ROUNDS = 2

Status = Literal["fixed", "answered", "unverified", "not_fixed"]
EXIT_CODES: dict[str, int] = {"fixed": 0, "answered": 0, "unverified": 5, "not_fixed": 1}
Sink = Callable[[Item], None]


@dataclass(frozen=True, slots=True)
class FixResult:
    status: Status
    reason: str  # the outcome in words
    verified: bool
    tests_command: str | None
    tests_passed_before: bool | None
    files_changed: list[str]
    steps: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    session: str
    seconds: float
    answer: str
    failing_before: list[str] = field(default_factory=list)
    failing_after: list[str] = field(default_factory=list)
    undo_point: int | None = None  # the snapshot before this task's first change

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


def outcome(
    *, changed: bool, after: TestRun | None, finished: bool, question: bool
) -> tuple[Status, str]:
    """The honest status of a task (pure). `finished`: the model answered within budget;
    `question`: a headless prompt (`-p`), where no change is a fine outcome."""
    if after is not None and not after.passed:
        return "not_fixed", f"`{after.command}` still fails"
    if not finished:
        return "not_fixed", "a budget ran out before the model finished"
    if changed and after is not None:
        return "fixed", f"`{after.command}` passes after the change"
    if changed:
        return "unverified", "files changed, but no test command was found to verify them"
    if question:
        return "answered", "answered without changing anything"
    return "not_fixed", "nothing changed"


def run_fix(
    settings: Settings,
    workspace: Path,
    task: str,
    *,
    sink: Sink,
    mode: Mode,
    test_cmd: str | None = None,
    backend: ModelBackend | None = None,
    resume: str | None = None,
    continue_last: bool = False,
    before: TestRun | None = None,
    question: bool = False,
    runtime: Runtime | None = None,
) -> FixResult:
    """`before`: the test run the caller already made (not repeated); `runtime`: the caller's
    wiring of this workspace (built here otherwise)."""
    started = time.monotonic()
    runtime = runtime or build_runtime(settings, workspace, None, mode=mode)
    agent = runtime.with_backend(
        backend or build_backend(settings, lambda text: sink(Notice(text)))
    )
    if resume is not None or continue_last:
        session = runtime.resume_session(resume)
    else:
        session = runtime.new_session(task)
    usage_before = session.usage
    command = test_cmd or detect_test_command(workspace)
    if before is None and command:
        before = run_tests(runtime.runner, command)
    if before is not None and before.passed:
        sink(Notice(f"`{command}` already passes before any change"))
    prompt = task
    if command:
        prompt += f"\n\nVerify with: `{command}`" + (
            f"\nIt currently fails:\n{before.summary}" if before and not before.passed else ""
        )
    steps, answer, after, finished = 0, "", None, False
    budget_s = settings.max_minutes * 60
    with session:
        session.begin_turn(prompt)
        for round_number in range(VERIFY_ROUNDS + 1):
            spent = session.usage.completion_tokens - usage_before.completion_tokens
            token_budget = settings.max_total_tokens
            remaining = Budget(
                max(1, settings.max_steps - steps),
                max(1.0, budget_s - (time.monotonic() - started)),
                max_output_tokens=None if token_budget is None else max(1, token_budget - spent),
            )
            done: TaskDone | None = None
            for item in agent.run(session, remaining):
                sink(item)
                if isinstance(item, TaskDone):
                    done = item
            assert done is not None
            steps += done.steps
            answer, finished = done.answer, done.reason == "answered"
            after = run_tests(runtime.runner, command) if command else None
            if not finished or after is None or after.passed or round_number == VERIFY_ROUNDS:
                break
            session.append(UserMessage(f"The tests still fail:\n{after.summary}\nFix them."))
    turn = session.turns[-1]
    files = changed_files(runtime.checkpoints, turn.snapshot)
    status, reason = outcome(changed=bool(files), after=after, finished=finished,
                             question=question)  # fmt: skip
    used = session.usage
    return FixResult(
        status=status,
        reason=reason,
        verified=status == "fixed",
        tests_command=command,
        tests_passed_before=None if before is None else before.passed,
        files_changed=files,
        steps=steps,
        prompt_tokens=used.prompt_tokens - usage_before.prompt_tokens,
        completion_tokens=used.completion_tokens - usage_before.completion_tokens,
        cached_tokens=used.cached_tokens - usage_before.cached_tokens,
        session=session.id,
        seconds=round(time.monotonic() - started, 2),
        answer=answer,
        failing_before=list(before.failed) if before else [],
        failing_after=list(after.failed) if after else [],
        undo_point=turn.snapshot,
    )


def changed_files(checkpoints: Checkpoints, since: int | None) -> list[str]:
    """Paths that differ from snapshot `since` (none when there is no snapshot)."""
    if since is None:
        return []
    diff = checkpoints.diff(since)
    return sorted({m.group(1) for m in re.finditer(r"^diff --git a/(\S+) b/", diff, re.MULTILINE)})


def result_json(result: FixResult, *, one_line: bool = False) -> str:
    """The result object (`--json`); on one line, typed "result", for `stream-json`."""
    data = {**asdict(result), "exit_code": result.exit_code}
    if one_line:
        return json.dumps({"type": "result", **data})
    return json.dumps(data, indent=2)


def error_json(message: str, exit_code: int, *, one_line: bool = False) -> str:
    """The final result when the task could not run or failed (`--json`/`stream-json`)."""
    data = {"status": "error", "error": message, "exit_code": exit_code}
    if one_line:
        return json.dumps({"type": "result", **data})
    return json.dumps(data, indent=2)
