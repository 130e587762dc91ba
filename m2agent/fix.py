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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from m2agent.agent.approvals import Mode
from m2agent.agent.events import Notice, SessionStarted, TaskDone
from m2agent.agent.loop import Agent, Budget, Item
from m2agent.agent.messages import UserMessage
from m2agent.backends.base import ModelBackend
from m2agent.errors import M2AgentError
from m2agent.extensions import open_extensions
from m2agent.hooks import HookRunner
from m2agent.runtime import Runtime, build_backend, build_runtime
from m2agent.settings import Settings
from m2agent.stream_json import PERMISSION_MODES, ResultSubtype, StreamJsonEncoder, Usage
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
    end: str = "answered"  # how the loop ended: answered, max_steps, max_time, max_tokens

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
    wiring of this workspace, MCP servers and hooks included (`open_runtime`; kept open
    after). Otherwise it is built here from the settings and closed after the task."""
    owned = runtime is None
    runtime = runtime or open_runtime(settings, workspace, mode, sink)
    try:
        agent = runtime.with_backend(
            backend or build_backend(settings, lambda text: sink(Notice(text)))
        )
        return _run(settings, workspace, task, runtime, agent, sink, test_cmd=test_cmd,
                    resume=resume, continue_last=continue_last, before=before,
                    question=question)  # fmt: skip
    finally:
        if owned:
            runtime.close()


def open_runtime(settings: Settings, workspace: Path, mode: Mode, sink: Sink) -> Runtime:
    """The workspace's wiring with the session's MCP servers and hooks: headless runs wait
    for the servers to start (each within its startup timeout) and tell what did not. The
    caller closes it (`Runtime.close()` stops the servers)."""
    extensions = open_extensions(settings, workspace)
    try:
        extensions.wait_for_servers()
        for note in extensions.notes():
            sink(Notice(note))
        return build_runtime(settings, workspace, None, mode=mode, extensions=extensions)
    except BaseException:
        extensions.close()
        raise


def _run(
    settings: Settings,
    workspace: Path,
    task: str,
    runtime: Runtime,
    agent: Agent,
    sink: Sink,
    *,
    test_cmd: str | None,
    resume: str | None,
    continue_last: bool,
    before: TestRun | None,
    question: bool,
) -> FixResult:
    started = time.monotonic()
    if resume is not None or continue_last:
        session = runtime.resume_session(resume)
    else:
        session = runtime.new_session(task)
    hooks = runtime.attach_hooks(session)
    sink(
        SessionStarted(
            session.id,
            str(workspace),
            settings.model or "",
            tuple(runtime.tools.names),
            tuple((s["name"], s["status"]) for s in runtime.extensions.server_states())
            if runtime.extensions is not None
            else (),
            PERMISSION_MODES.get(runtime.approvals.mode, runtime.approvals.mode),
        )
    )
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
    if hooks is not None:
        prompt = _prompt_hooks(
            hooks, sink, prompt, "resume" if resume or continue_last else "startup"
        )
    steps, answer, after, finished = 0, "", None, False
    end = "answered"
    budget_s = settings.max_minutes * 60
    try:
        with session:
            session.begin_turn(prompt)
            for round_number in range(VERIFY_ROUNDS + 1):
                spent = session.usage.completion_tokens - usage_before.completion_tokens
                token_budget = settings.max_total_tokens
                remaining = Budget(
                    max(1, settings.max_steps - steps),
                    max(1.0, budget_s - (time.monotonic() - started)),
                    max_output_tokens=None
                    if token_budget is None
                    else max(1, token_budget - spent),
                )
                done: TaskDone | None = None
                for item in agent.run(session, remaining):
                    sink(item)
                    if isinstance(item, TaskDone):
                        done = item
                assert done is not None
                steps += done.steps
                answer, finished, end = done.answer, done.reason == "answered", done.reason
                after = run_tests(runtime.runner, command) if command else None
                if not finished or after is None or after.passed or round_number == VERIFY_ROUNDS:
                    break
                session.append(UserMessage(f"The tests still fail:\n{after.summary}\nFix them."))
    finally:
        if hooks is not None:
            for text in hooks.run("SessionEnd", {"reason": "other"}).messages:
                sink(Notice(text))
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
        end=end,
    )


def _prompt_hooks(hooks: HookRunner, sink: Sink, prompt: str, source: str) -> str:
    """SessionStart and UserPromptSubmit: their context joins the prompt; a refused prompt is
    an error (nothing was sent to the model)."""
    context: list[str] = []
    start = hooks.run("SessionStart", {"source": source}, source)
    submit = hooks.run("UserPromptSubmit", {"prompt": prompt})
    for outcome in (start, submit):
        for text in outcome.messages:
            sink(Notice(text))
        context += outcome.context
    if submit.blocked or submit.stop:
        why = submit.reason or submit.stop_reason
        raise M2AgentError(f"the prompt was refused by a UserPromptSubmit hook: {why}")
    if context:
        prompt += "\n\n" + "\n".join(f"[hook context: {c}]" for c in context)
    return prompt


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


# How the loop ended -> the result subtype Claude Code's consumers know.
SUBTYPES: dict[str, ResultSubtype] = {
    "answered": "success",
    "max_steps": "error_max_turns",
    "max_time": "error_during_execution",
    "max_tokens": "error_during_execution",
}


def result_event(
    result: FixResult, model: str, denials: Sequence[Mapping[str, Any]] = ()
) -> dict[str, Any]:
    """The result in Claude Code's shape (`--output-format json`, stream-json's last line);
    is_error when the exit code is not 0; `denials`: the calls refused for want of approval;
    m2agent's own fields under its `m2agent` key."""
    usage = Usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
    return StreamJsonEncoder(result.session, model).result(
        permission_denials=denials,
        subtype=SUBTYPES.get(result.end, "error_during_execution"),
        is_error=result.exit_code != 0,
        duration_ms=int(result.seconds * 1000),
        num_turns=result.steps,
        result=result.answer,
        usage=usage,
        extra={**asdict(result), "exit_code": result.exit_code},
    )


def error_event(message: str, exit_code: int, session_id: str, model: str) -> dict[str, Any]:
    """A task that could not run or failed, in Claude Code's result shape."""
    return StreamJsonEncoder(session_id, model).result(
        subtype="error_during_execution",
        is_error=True,
        duration_ms=0,
        num_turns=0,
        result=message,
        usage=Usage(),
        extra={"status": "error", "error": message, "exit_code": exit_code},
    )


def error_json(message: str, exit_code: int, *, one_line: bool = False) -> str:
    """The final result when the task could not run or failed (`--json`/`stream-json`)."""
    data = {"status": "error", "error": message, "exit_code": exit_code}
    if one_line:
        return json.dumps({"type": "result", **data})
    return json.dumps(data, indent=2)
