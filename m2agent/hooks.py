"""Hooks in Claude Code's model, so existing hook scripts work unchanged.

Config (TOML form of Claude Code's settings), from the user config or a trusted project's:

    [[hooks.PreToolUse]]
    matcher = "Bash"            # a tool name or a regex (fully matched); "" or "*" = all
    hooks = [{ type = "command", command = "~/bin/check.sh", timeout = 30 }]

Each matching command runs with bash, outside the sandbox (hooks are the user's own code), in
the project directory, with the event as JSON on stdin (`session_id`, `transcript_path`, `cwd`,
`hook_event_name`, `permission_mode`, plus `tool_name`/`tool_input`/`tool_response`, `prompt`,
`source`, `reason`, `stop_hook_active` as the event has them). Exit 0: go on (stdout may be JSON:
`continue`, `stopReason`, `systemMessage`, `decision`/`reason`, `hookSpecificOutput` with
`permissionDecision` allow/deny/ask, `permissionDecisionReason`, `additionalContext`,
`updatedInput`); exit 2: block, stderr is the reason; any other exit or a timeout: a warning
for the user, and the agent goes on. What a block means per event is the caller's (the loop's)
business; this module runs hooks and folds their answers into one `HookOutcome`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

HookEvent = Literal[
    "PreToolUse", "PostToolUse", "UserPromptSubmit", "Stop", "SessionStart", "SessionEnd"
]
HOOK_EVENTS: tuple[HookEvent, ...] = get_args(HookEvent)
Permission = Literal["allow", "deny", "ask"]
DEFAULT_TIMEOUT_S = 60.0
MAX_OUTPUT_CHARS = 10_000  # what one hook may feed back to the model
_STRENGTH = {"allow": 0, "ask": 1, "deny": 2}  # the strictest answer wins


class HookConfigError(ValueError):
    """A hooks table that cannot be used; the text names the file and the entry."""


@dataclass(frozen=True, slots=True)
class CommandHook:
    command: str
    timeout_s: float = DEFAULT_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class HookGroup:
    matcher: str  # "" matches everything
    hooks: tuple[CommandHook, ...]

    def matches(self, target: str | None) -> bool:
        if self.matcher in ("", "*") or target is None:
            return True
        return re.fullmatch(self.matcher, target) is not None


@dataclass(frozen=True, slots=True)
class HooksConfig:
    groups: Mapping[HookEvent, tuple[HookGroup, ...]] = field(default_factory=dict)

    def commands(self, event: HookEvent, target: str | None) -> list[CommandHook]:
        """The distinct commands to run for `event` on `target` (a tool name, a source)."""
        found: list[CommandHook] = []
        for group in self.groups.get(event, ()):
            if group.matches(target):
                found += [h for h in group.hooks if h not in found]
        return found

    def __bool__(self) -> bool:
        return any(self.groups.values())


def merge_hooks(*configs: HooksConfig) -> HooksConfig:
    """Hooks from several config files all run, as in Claude Code."""
    merged: dict[HookEvent, tuple[HookGroup, ...]] = {}
    for config in configs:
        for event, groups in config.groups.items():
            merged[event] = merged.get(event, ()) + groups
    return HooksConfig(merged)


class _Hook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["command"]
    command: str = Field(min_length=1)
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, description="seconds")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matcher: str = ""
    hooks: list[_Hook] = Field(min_length=1)


def parse_hooks(table: Any, where: str) -> HooksConfig:
    """The `hooks` table of a config file (`where` names the file in errors)."""
    if not isinstance(table, Mapping):
        raise HookConfigError(f"{where}: hooks must be a table of [[hooks.EVENT]] entries")
    groups: dict[HookEvent, tuple[HookGroup, ...]] = {}
    for event, entries in table.items():
        if event not in HOOK_EVENTS:
            raise HookConfigError(
                f"{where}: unknown hook event {event!r}; known: {', '.join(HOOK_EVENTS)}"
            )
        if not isinstance(entries, list):
            raise HookConfigError(f"{where}: hooks.{event} must be an array: [[hooks.{event}]]")
        parsed = []
        for index, raw in enumerate(entries):
            try:
                group = _Group.model_validate(raw)
                if group.matcher not in ("", "*"):
                    re.compile(group.matcher)
            except ValidationError as e:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
                )
                raise HookConfigError(f"{where}: hooks.{event}[{index}]: {problems}") from None
            except re.error as e:
                raise HookConfigError(
                    f"{where}: hooks.{event}[{index}]: matcher {group.matcher!r} is not a "
                    f"valid regular expression ({e})"
                ) from None
            hooks = tuple(CommandHook(h.command, h.timeout) for h in group.hooks)
            parsed.append(HookGroup(group.matcher, hooks))
        groups[event] = tuple(parsed)
    return HooksConfig(groups)


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """What the hooks of one event said, folded together."""

    blocked: bool = False  # exit 2, `decision: "block"`, or a deny
    reason: str = ""  # why (stderr of exit 2, `reason`, `permissionDecisionReason`)
    permission: Permission | None = None  # PreToolUse: the strictest decision given
    context: tuple[str, ...] = ()  # additionalContext (and plain stdout where it counts)
    updated_input: Mapping[str, Any] | None = None  # PreToolUse: replacement tool input
    stop: bool = False  # `continue: false`: end the turn
    stop_reason: str = ""
    messages: tuple[str, ...] = ()  # for the user: systemMessage, failures, timeouts


# Events whose plain (non-JSON) stdout on exit 0 becomes context for the model.
_STDOUT_IS_CONTEXT: frozenset[HookEvent] = frozenset({"UserPromptSubmit", "SessionStart"})


class HookRunner:
    """Runs the configured hooks of a session; `run` never raises for a hook's failure."""

    def __init__(
        self,
        config: HooksConfig,
        *,
        session_id: str,
        transcript_path: Path | None,
        cwd: Path,
        permission_mode: str = "default",
    ) -> None:
        self.config = config
        self.session_id = session_id
        self.transcript_path = transcript_path
        self.cwd = cwd
        self.permission_mode = permission_mode

    def run(
        self, event: HookEvent, payload: Mapping[str, Any], target: str | None = None
    ) -> HookOutcome:
        """Run the hooks of `event` that match `target` (in parallel) and fold their answers."""
        commands = self.config.commands(event, target)
        if not commands:
            return HookOutcome()
        body = {
            "session_id": self.session_id,
            "transcript_path": str(self.transcript_path) if self.transcript_path else "",
            "cwd": str(self.cwd),
            "hook_event_name": event,
            "permission_mode": self.permission_mode,
            **payload,
        }
        stdin = json.dumps(body, ensure_ascii=False, default=str)
        with ThreadPoolExecutor(max_workers=min(8, len(commands))) as pool:
            results = list(pool.map(lambda hook: self._one(hook, stdin), commands))
        outcomes = [
            _interpret(event, hook, *result) for hook, result in zip(commands, results, strict=True)
        ]
        return _fold(outcomes)

    def _one(self, hook: CommandHook, stdin: str) -> tuple[int | None, str, str]:
        """(exit code or None on timeout, stdout, stderr)."""
        env = dict(os.environ)
        env["CLAUDE_PROJECT_DIR"] = env["M2AGENT_PROJECT_DIR"] = str(self.cwd)
        try:
            process = subprocess.Popen(
                ["/bin/bash", "-c", hook.command],
                cwd=self.cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        except OSError as e:
            return 1, "", f"could not start: {e}"
        try:
            out, err = process.communicate(stdin, timeout=hook.timeout_s)
            return process.returncode, out, err
        except subprocess.TimeoutExpired:
            _kill_group(process)
            out, err = process.communicate()
            return None, out, err


def _kill_group(process: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            continue


def _interpret(
    event: HookEvent, hook: CommandHook, code: int | None, out: str, err: str
) -> HookOutcome:
    name = hook.command if len(hook.command) <= 60 else hook.command[:57] + "..."
    if code is None:
        return HookOutcome(messages=(f"{event} hook `{name}` timed out after {hook.timeout_s:g}s",))
    if code == 2:
        reason = _clip(err.strip()) or f"blocked by the {event} hook `{name}`"
        return HookOutcome(blocked=True, reason=reason, permission="deny")
    if code != 0:
        detail = _clip(err.strip()) or "(no stderr)"
        return HookOutcome(messages=(f"{event} hook `{name}` failed (exit {code}): {detail}",))
    text = out.strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return _from_json(event, data)
    if text and event in _STDOUT_IS_CONTEXT:
        return HookOutcome(context=(_clip(text),))
    return HookOutcome()


def _from_json(event: HookEvent, data: Mapping[str, Any]) -> HookOutcome:
    specific = data.get("hookSpecificOutput")
    specific = specific if isinstance(specific, Mapping) else {}
    permission: Permission | None = None
    reason = str(data.get("reason") or "")
    blocked = data.get("decision") == "block"
    if event == "PreToolUse":
        decision = specific.get("permissionDecision")
        legacy = {"approve": "allow", "block": "deny"}.get(str(data.get("decision")))
        chosen = decision if decision in _STRENGTH else legacy
        if chosen is not None:
            permission = chosen  # type: ignore[assignment]
            reason = str(specific.get("permissionDecisionReason") or reason)
        blocked = permission == "deny"
    context = specific.get("additionalContext")
    updated = specific.get("updatedInput")
    message = data.get("systemMessage")
    return HookOutcome(
        blocked=blocked,
        reason=_clip(reason),
        permission=permission,
        context=(_clip(str(context)),) if context else (),
        updated_input=dict(updated) if isinstance(updated, Mapping) else None,
        stop=data.get("continue") is False,
        stop_reason=str(data.get("stopReason") or ""),
        messages=(str(message),) if message else (),
    )


def _fold(outcomes: Sequence[HookOutcome]) -> HookOutcome:
    permission: Permission | None = None
    for outcome in outcomes:
        if outcome.permission is not None and (
            permission is None or _STRENGTH[outcome.permission] > _STRENGTH[permission]
        ):
            permission = outcome.permission
    updated = [o.updated_input for o in outcomes if o.updated_input is not None]
    return HookOutcome(
        blocked=any(o.blocked for o in outcomes),
        reason="\n".join(o.reason for o in outcomes if o.reason and (o.blocked or o.permission)),
        permission=permission,
        context=tuple(c for o in outcomes for c in o.context),
        updated_input=updated[-1] if updated else None,
        stop=any(o.stop for o in outcomes),
        stop_reason="\n".join(o.stop_reason for o in outcomes if o.stop_reason),
        messages=tuple(m for o in outcomes for m in o.messages),
    )


def _clip(text: str) -> str:
    if len(text) <= MAX_OUTPUT_CHARS:
        return text
    return text[:MAX_OUTPUT_CHARS] + f"\n[... {len(text) - MAX_OUTPUT_CHARS} characters cut]"
