"""Slash commands: an explicit table of small functions; /help shows their docstrings."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.syntax import Syntax
from rich.text import Text

if TYPE_CHECKING:
    from m2agent.ui.repl import Repl


def _help(repl: Repl, arg: str) -> None:
    """Show the commands."""
    for name, command in COMMANDS.items():
        repl.console.print(Text(f"/{name:12} {command.__doc__}"))


def _exit(repl: Repl, arg: str) -> str:
    """Leave the REPL."""
    return "exit"


def _diff(repl: Repl, arg: str) -> None:
    """Changes since the session started."""
    snapshots = repl.runtime.checkpoints.list()
    first = next((s for s in snapshots if s.number >= (repl.first_snapshot or 0)), None)
    if repl.first_snapshot is None or first is None:
        repl.console.print("no changes in this session")
        return
    diff = repl.runtime.checkpoints.diff(repl.first_snapshot)
    repl.console.print(Syntax(diff, "diff", theme="ansi_dark") if diff else "no changes")


def _undo(repl: Repl, arg: str) -> None:
    """Undo the last step's changes (/undo N: the last N steps)."""
    mine = [
        s for s in repl.runtime.checkpoints.list() if s.number >= (repl.first_snapshot or 10**9)
    ]
    steps = int(arg) if arg.strip().isdigit() else 1
    if not mine:
        repl.console.print("nothing to undo in this session")
        return
    target = mine[max(0, len(mine) - steps)]
    repl.runtime.checkpoints.restore(target.number)
    repl.console.print(f"restored the workspace to before: {target.label}")


def _checkpoints(repl: Repl, arg: str) -> None:
    """List the undo points of this workspace."""
    for s in repl.runtime.checkpoints.list()[-20:]:
        repl.console.print(f"{s.number:4}  {s.label}")


def _think(repl: Repl, arg: str) -> None:
    """Show the last reasoning in full."""
    repl.console.print(
        Text(repl.printer.last_reasoning or "(no reasoning yet)", style="dim italic")
    )


def _todo(repl: Repl, arg: str) -> None:
    """Show the model's plan."""
    repl.console.print(repl.runtime.todos.render())


def _tools(repl: Repl, arg: str) -> None:
    """List the tools the model can use."""
    for schema in repl.runtime.agent.tools.schemas():
        fn = schema["function"]
        repl.console.print(f"{fn['name']:10} {fn['description'][:90]}")


def _mode(repl: Repl, arg: str) -> None:
    """Show or set the approval mode (read-only, ask, auto-edit, auto)."""
    from m2agent.agent.approvals import MODES

    if arg.strip() in MODES:
        repl.runtime.agent.approvals.mode = arg.strip()  # type: ignore[assignment]
    repl.console.print(f"mode: {repl.runtime.agent.approvals.mode} (one of {', '.join(MODES)})")


def _cost(repl: Repl, arg: str) -> None:
    """Tokens in and out, cached, and time, this session."""
    p = repl.printer
    minutes = (time.monotonic() - repl.started) / 60
    repl.console.print(
        f"prompt {p.prompt_tokens} (cached {p.cached_tokens}), output {p.completion_tokens}; "
        f"{minutes:.1f} min in this session, {repl.model_seconds:.1f} s waiting on the model"
    )


def _clear(repl: Repl, arg: str) -> None:
    """Start a fresh conversation (files are not touched)."""
    del repl.messages[1:]
    repl.log = None
    repl.console.print("conversation cleared")


def _sandbox(repl: Repl, arg: str) -> None:
    """The sandbox backend and its diagnosis."""
    from m2agent.tools.sandbox import bwrap

    probe = bwrap.probe()
    repl.console.print(f"{repl.settings.sandbox}: {probe.diagnosis} {probe.advice}".strip())


def _model(repl: Repl, arg: str) -> None:
    """The model and backend in use."""
    repl.console.print(f"{repl.settings.model} via {repl.backend.name} ({repl.settings.endpoint})")


def _compact(repl: Repl, arg: str) -> None:
    """Compact the conversation now."""
    from m2agent.agent.context import compact

    before = len(repl.messages)
    repl.messages[:] = compact(repl.messages, keep_turns=2)
    repl.console.print(f"{before} messages -> {len(repl.messages)}")


def _sessions(repl: Repl, arg: str) -> None:
    """List this workspace's sessions."""
    from m2agent.agent.session import list_sessions

    for s in list_sessions(repl.runtime.project / "sessions")[-20:]:
        repl.console.print(f"{s.id}  {s.task.splitlines()[0][:70] if s.task else ''}")


def _resume(repl: Repl, arg: str) -> None:
    """Continue an earlier session (/resume ID; the latest without ID)."""
    from m2agent.agent.session import SessionLog, find_session, load_messages

    try:
        earlier = find_session(repl.runtime.project / "sessions", arg.strip() or None)
    except LookupError as e:
        repl.console.print(Text(str(e), style="red"))
        return
    repl.messages[:] = load_messages(earlier.path)
    repl.log = SessionLog(repl.runtime.project / "sessions", "", repl.workspace, resume=earlier)
    turns = sum(1 for m in repl.messages if m.get("role") == "user")
    repl.console.print(f"resumed {earlier.id} ({turns} user messages)")


COMMANDS: dict[str, Callable[..., Any]] = {
    "help": _help,
    "model": _model,
    "mode": _mode,
    "tools": _tools,
    "todo": _todo,
    "diff": _diff,
    "undo": _undo,
    "checkpoints": _checkpoints,
    "compact": _compact,
    "clear": _clear,
    "cost": _cost,
    "sessions": _sessions,
    "resume": _resume,
    "sandbox": _sandbox,
    "think": _think,
    "exit": _exit,
}


def run_command(repl: Repl, line: str) -> Any:
    name, _, arg = line[1:].partition(" ")
    command = COMMANDS.get(name)
    if command is None:
        repl.console.print(Text(f"unknown command /{name}; /help lists them", style="red"))
        return None
    return command(repl, arg)
