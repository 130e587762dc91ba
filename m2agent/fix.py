"""`m2agent fix ISSUE`: one headless task, verified by the project's tests.

Exit codes: 0 fixed and verified, 1 not fixed, 2 usage error, 3 sandbox unavailable, 4 model
or endpoint error, 130 interrupted."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m2agent.agent.approvals import ApprovalReply, ApprovalRequest
from m2agent.agent.events import SnapshotTaken, StepUsage, TaskDone, event_json
from m2agent.agent.loop import Budget
from m2agent.agent.prompts import system_prompt
from m2agent.agent.session import SessionInfo, SessionLog, find_session, load_messages
from m2agent.backends.base import ModelBackend
from m2agent.backends.embedded import BackgroundEngine, ensure_engine, is_local_model
from m2agent.errors import M2AgentError, UsageError
from m2agent.extensions import Extensions, open_extensions
from m2agent.hooks import HookRunner
from m2agent.issue_source import resolve_task
from m2agent.runtime import Runtime, build_runtime
from m2agent.settings import Settings
from m2agent.stream_json import StreamJsonEncoder, Usage
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.run_tests import TestRun, detect_test_command, run_tests
from m2agent.ui.headless import HeadlessRenderer, OutputFormat
from m2agent.ui.stream_json_sink import SUBTYPES, StreamJsonSink

VERIFY_ROUNDS = 2


@dataclass(frozen=True, slots=True)
class FixResult:
    status: str  # "fixed" | "not_fixed"
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
    first_snapshot: int | None = None  # the undo point before the session's first change
    end: str = "answered"  # how the loop ended: answered, max_steps, max_time, max_tokens

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "fixed" else 1


def make_backend(
    settings: Settings,
    progress: Callable[[str], None] = lambda _: None,
    *,
    background: bool = False,
) -> ModelBackend:
    """The backend the settings ask for. `background`: an embedded engine starts on a thread
    (the REPL shows its prompt meanwhile)."""
    limits: dict[str, Any] = {
        "max_tokens": settings.max_tokens,
        "temperature": settings.temperature,
    }
    if not settings.endpoint and settings.model and is_local_model(settings.model):
        if background:
            progress("starting the embedded engine in the background")
            return BackgroundEngine(
                Path(settings.model), settings.state_dir, tp=settings.tp, **limits
            )
        from m2agent.backends.completions import CompletionsBackend

        url, name = ensure_engine(
            Path(settings.model), settings.state_dir, tp=settings.tp, progress=progress
        )
        return CompletionsBackend(url, name, **limits)
    if not settings.endpoint or not settings.model:
        raise UsageError(
            "no model: pass --endpoint URL --model NAME for a server (or set M2AGENT_ENDPOINT "
            "and M2AGENT_MODEL), or --model PATH to a local MiniMax-M2 checkpoint folder to run "
            "it with the embedded engine"
        )
    target = (settings.endpoint, settings.model, settings.api_key)
    if settings.api == "anthropic":
        from m2agent.backends.anthropic import AnthropicBackend

        return AnthropicBackend(*target, auth_token=settings.auth_token, **limits)
    if settings.api == "completions":
        from m2agent.backends.completions import CompletionsBackend

        return CompletionsBackend(*target, **limits)
    from m2agent.backends.openai_chat import OpenAIChatBackend

    return OpenAIChatBackend(
        *target, **limits, style_cache=settings.state_dir / "server-styles.json"
    )


def run_fix(
    settings: Settings,
    workspace: Path,
    issue: str,
    *,
    test_cmd: str | None,
    yes: bool,
    output: OutputFormat,
    backend: ModelBackend | None = None,
    resume: str | None = None,
    continue_last: bool = False,
    before: TestRun | None = None,
    announce: bool = True,
) -> FixResult:
    """`before`: the test run the caller already made (not repeated). `announce`: write the
    stream-json `init` event (the first turn of a run does)."""
    started = time.monotonic()
    task = resolve_task(issue, workspace, settings)
    renderer = HeadlessRenderer(output)
    backend = backend or make_backend(settings, renderer.note)
    with open_extensions(settings, workspace) as extensions:
        extensions.wait_for_servers()
        for note in extensions.notes():
            renderer.note(note)
        runtime = build_runtime(
            settings,
            workspace,
            backend,
            mode="auto" if yes else settings.approval_mode,
            ask=None if yes or not sys.stdin.isatty() else _ask_on_terminal,
            extra_tools=extensions.tools(),
        )
        return _run(settings, workspace, task, runtime, extensions, renderer, output,
                    test_cmd=test_cmd, yes=yes, resume=resume, continue_last=continue_last,
                    before=before, announce=announce, started=started)  # fmt: skip


def _run(
    settings: Settings,
    workspace: Path,
    task: str,
    runtime: Runtime,
    extensions: Extensions,
    renderer: HeadlessRenderer,
    output: OutputFormat,
    *,
    test_cmd: str | None,
    yes: bool,
    resume: str | None,
    continue_last: bool,
    before: TestRun | None,
    announce: bool,
    started: float,
) -> FixResult:
    agent, runner, checkpoints, project = (
        runtime.agent,
        runtime.runner,
        runtime.checkpoints,
        runtime.project,
    )
    earlier: SessionInfo | None = None
    if resume is not None or continue_last:
        try:
            earlier = find_session(project / "sessions", resume)
        except LookupError as e:
            raise UsageError(str(e)) from None
    log = SessionLog(project / "sessions", task, workspace, resume=earlier)
    permission_mode = "auto" if yes else settings.approval_mode
    hooks = extensions.hooks(log.id, log.path, permission_mode)
    agent.hooks = hooks
    sink = None
    if output == "stream-json":
        sink = StreamJsonSink(StreamJsonEncoder(log.id, settings.model or ""), renderer.out)
        if announce:
            sink.start(cwd=str(workspace), tools=agent.tools.names,
                       mcp_servers=extensions.server_states(),
                       permission_mode=permission_mode)  # fmt: skip

    command = test_cmd or detect_test_command(workspace)
    if before is None and command:
        before = run_tests(runner, command)
    if before is not None and before.passed:
        renderer.note(f"`{command}` already passes before any change")
    prompt = task
    if hooks is not None:
        source = "resume" if earlier is not None else "startup"
        prompt = _prompt_hooks(hooks, renderer, prompt, source)
    if command:
        prompt += f"\n\nVerify with: `{command}`" + (
            f"\nIt currently fails:\n{before.summary}" if before and not before.passed else ""
        )
    messages: list[dict[str, Any]] = load_messages(earlier.path) if earlier else []
    if earlier is not None:
        new = [{"role": "user", "content": prompt}]
    else:
        new = [
            {
                "role": "system",
                "content": system_prompt(workspace, user_dir=settings.config_dir, home=Path.home()),
            },
            {"role": "user", "content": prompt},
        ]
    messages += new
    for message in new:
        log.write("message", message)

    usage = [0, 0, 0]
    steps, answer, after = 0, "", None
    first_snapshot: int | None = None
    budget_s = settings.max_minutes * 60
    try:
        for round_number in range(VERIFY_ROUNDS + 1):
            token_budget = settings.max_total_tokens
            remaining = Budget(
                max(1, settings.max_steps - steps),
                max(1.0, budget_s - (time.monotonic() - started)),
                max_output_tokens=None if token_budget is None else max(1, token_budget - usage[1]),
            )
            done = None
            count = len(messages)
            for event in agent.run(messages, remaining):
                if sink is not None:
                    sink.render(event)
                else:
                    renderer.render(event)
                log.write("event", event_json(event))
                if isinstance(event, StepUsage):
                    usage = [
                        usage[0] + event.prompt_tokens,
                        usage[1] + event.completion_tokens,
                        usage[2] + event.cached_tokens,
                    ]
                elif isinstance(event, SnapshotTaken):
                    log.write("snapshot", {"number": event.number, "label": event.label})
                    first_snapshot = first_snapshot or event.number
                elif isinstance(event, TaskDone):
                    done = event
            for message in messages[count:]:
                log.write("message", message)
            assert done is not None
            steps += done.steps
            answer = done.answer
            after = run_tests(runner, command) if command else None
            if (
                done.reason != "answered"
                or after is None
                or after.passed
                or round_number == VERIFY_ROUNDS
            ):
                break
            messages.append(
                {"role": "user", "content": f"The tests still fail:\n{after.summary}\nFix them."}
            )
            log.write("message", messages[-1])
    finally:
        if hooks is not None:
            for text in hooks.run("SessionEnd", {"reason": "other"}).messages:
                renderer.note(text)
        log.close()
    verified = after is not None and after.passed
    answered = bool(answer) or steps > 0
    status = "fixed" if (verified or (after is None and answered)) else "not_fixed"
    end = done.reason if done is not None else "answered"
    result = FixResult(
        status=status,
        verified=verified,
        tests_command=command,
        tests_passed_before=None if before is None else before.passed,
        files_changed=_changed_files(checkpoints),
        steps=steps,
        prompt_tokens=usage[0],
        completion_tokens=usage[1],
        cached_tokens=usage[2],
        session=log.id,
        seconds=round(time.monotonic() - started, 2),
        answer=answer,
        failing_before=list(before.failed) if before else [],
        failing_after=list(after.failed) if after else [],
        first_snapshot=first_snapshot,
        end=end,
    )
    return result


def _prompt_hooks(hooks: HookRunner, renderer: HeadlessRenderer, prompt: str, source: str) -> str:
    """SessionStart and UserPromptSubmit: their context joins the prompt; a blocked prompt is
    an error."""
    context: list[str] = []
    start = hooks.run("SessionStart", {"source": source}, source)
    submit = hooks.run("UserPromptSubmit", {"prompt": prompt})
    for outcome in (start, submit):
        for text in outcome.messages:
            renderer.note(text)
        context += outcome.context
    if submit.blocked or submit.stop:
        why = submit.reason or submit.stop_reason
        raise M2AgentError(f"the prompt was blocked by a UserPromptSubmit hook: {why}")
    if context:
        prompt += "\n\n" + "\n".join(f"[hook context: {c}]" for c in context)
    return prompt


def result_event(result: FixResult, model: str) -> dict[str, Any]:
    """The result in Claude Code's shape (`--output-format json`, the last stream-json line);
    m2agent's own fields under its `m2agent` key."""
    from dataclasses import asdict

    subtype = SUBTYPES.get(result.end, "error_during_execution")
    usage = Usage(result.prompt_tokens, result.completion_tokens, result.cached_tokens)
    return StreamJsonEncoder(result.session, model).result(
        subtype=subtype,
        is_error=result.exit_code != 0,
        duration_ms=int(result.seconds * 1000),
        num_turns=result.steps,
        result=result.answer,
        usage=usage,
        extra={**asdict(result), "exit_code": result.exit_code},
    )


def _changed_files(checkpoints: Checkpoints) -> list[str]:
    snapshots = checkpoints.list()
    if not snapshots:
        return []
    diff = checkpoints.diff(snapshots[0].number)
    return sorted({m.group(1) for m in re.finditer(r"^diff --git a/(\S+) b/", diff, re.MULTILINE)})


def _ask_on_terminal(request: ApprovalRequest) -> ApprovalReply:
    shown = request.arguments.get("command") or request.arguments.get("file_path") or ""
    reply = input(f"Allow {request.tool} {shown}? [y]es / [n]o / [a]lways: ").strip().lower()
    if reply in ("a", "always"):
        return ApprovalReply("always")
    return ApprovalReply("yes" if reply in ("y", "yes") else "no")


def result_json(result: FixResult, *, one_line: bool = False) -> str:
    """The result object (`--json`); on one line, typed "result", for `stream-json`."""
    from dataclasses import asdict

    if one_line:
        return json.dumps({"type": "result", **asdict(result)})
    return json.dumps(asdict(result), indent=2)
