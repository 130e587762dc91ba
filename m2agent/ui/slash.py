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
    """Changes since this session's first change."""
    turns = repl.session.turns if repl.session is not None else ()
    first = next((t.snapshot for t in turns if t.snapshot), None)
    if first is None:
        repl.console.print("no changes in this session")
        return
    diff = repl.runtime.checkpoints.diff(first)
    repl.console.print(Syntax(diff, "diff", theme="ansi_dark") if diff else "no changes")


def _undo(repl: Repl, arg: str) -> None:
    """Undo what your last message changed (/undo N: back to before undo point N)."""
    checkpoints = repl.runtime.checkpoints
    if arg.strip():
        if not arg.strip().isdigit():
            repl.console.print(Text("usage: /undo, or /undo N with N from /checkpoints", "red"))
            return
        try:
            snapshot = checkpoints.restore(int(arg))
        except RuntimeError as e:
            repl.console.print(Text(str(e), style="red"))
            return
        if repl.session is not None:
            for later in repl.session.turns:
                if later.snapshot and later.snapshot >= snapshot.number and not later.undone:
                    repl.session.mark_undone(later)
        _tell_model(repl, f"the workspace was restored to undo point {snapshot.number}")
        repl.console.print(Text(f"restored the workspace to undo point {snapshot.number}"))
        return
    turn = repl.session.last_undo_point() if repl.session else None
    if repl.session is None or turn is None or turn.snapshot is None:
        repl.console.print("nothing to undo: no message of this session changed a file")
        return
    checkpoints.restore(turn.snapshot)
    repl.session.mark_undone(turn)
    _tell_model(repl, f"everything your turn for {turn.title!r} changed was reverted")
    repl.console.print(Text(f"restored the workspace to before: {turn.title}"))


def _tell_model(repl: Repl, what: str) -> None:
    repl.pending_note += f"[Note: the user undid changes: {what}. Re-read files before editing.]\n"


def _checkpoints(repl: Repl, arg: str) -> None:
    """List the undo points of this workspace (for /undo N)."""
    snapshots = repl.runtime.checkpoints.list()[-20:]
    if not snapshots:
        repl.console.print("no undo points yet")
    for s in snapshots:
        repl.console.print(Text(f"{s.number:4}  {s.label}"))


def _think(repl: Repl, arg: str) -> None:
    """Show the last reasoning in full."""
    repl.console.print(
        Text(repl.printer.last_reasoning or "(no reasoning yet)", style="dim italic")
    )


def _todo(repl: Repl, arg: str) -> None:
    """Show the model's plan."""
    repl.console.print(repl.runtime.todos.render())


def _tools(repl: Repl, arg: str) -> None:
    """List the tools the model can use (MCP servers' included, once they are ready)."""
    for schema in repl.runtime.refresh_tools().schemas():
        fn = schema["function"]
        repl.console.print(f"{fn['name']:10} {fn['description'][:90]}")


def _mode(repl: Repl, arg: str) -> None:
    """Show or set the approval mode (read-only, ask, auto-edit, auto)."""
    from m2agent.agent.approvals import MODES

    if arg.strip() in MODES:
        repl.runtime.approvals.mode = arg.strip()  # type: ignore[assignment]
    elif arg.strip():
        repl.console.print(Text(f"unknown mode {arg.strip()!r}", style="red"))
    repl.console.print(f"mode: {repl.runtime.approvals.mode} (one of {', '.join(MODES)})")


def _cost(repl: Repl, arg: str) -> None:
    """Tokens in and out, cached, and time, this session."""
    usage = repl.session.usage if repl.session else None
    minutes = (time.monotonic() - repl.started) / 60
    tokens = (
        f"prompt {usage.prompt_tokens} (cached {usage.cached_tokens}), "
        f"output {usage.completion_tokens}; "
        if usage
        else "no tokens yet; "
    )
    repl.console.print(
        f"{tokens}{minutes:.1f} min in this session, {repl.model_seconds:.1f} s waiting on the "
        "model"
    )


def _clear(repl: Repl, arg: str) -> None:
    """Start a fresh conversation (files are not touched)."""
    repl.end_session("clear")
    repl.console.print("conversation cleared")


def _sandbox(repl: Repl, arg: str) -> None:
    """The sandbox backend and its diagnosis."""
    from m2agent.tools.sandbox import bwrap

    probe = bwrap.probe()
    repl.console.print(f"{repl.settings.sandbox}: {probe.diagnosis} {probe.advice}".strip())


def _model(repl: Repl, arg: str) -> None:
    """Show the model, or set it: /model URL NAME (an endpoint), /model NAME, /model PATH."""
    from dataclasses import replace

    from m2agent.errors import M2AgentError
    from m2agent.runtime import build_backend
    from m2agent.settings import check_endpoint

    words = arg.split()
    if not words:
        if repl.backend is None:
            repl.console.print("no model configured: /model URL NAME sets one")
        else:
            where = repl.settings.endpoint or "embedded engine"
            repl.console.print(f"{repl.settings.model} via {repl.backend.name} ({where})")
        return
    if len(words) > 2:
        repl.console.print(Text("usage: /model URL NAME, /model NAME or /model PATH", "red"))
        return
    endpoint = words[0] if len(words) == 2 else repl.settings.endpoint
    try:
        if len(words) == 2:
            check_endpoint(words[0])
        settings = replace(repl.settings, endpoint=endpoint, model=words[-1])
        backend = build_backend(settings, repl.console.print, background=True)
    except M2AgentError as e:
        repl.console.print(Text(f"error: {e.message}", style="red"))
        return
    repl.settings, repl.backend = settings, backend
    repl.runtime.with_backend(backend)
    repl.console.print(f"model: {settings.model} via {backend.name} ({endpoint or 'embedded'})")


def _compact(repl: Repl, arg: str) -> None:
    """Compact the conversation now."""
    from m2agent.agent.context import compact

    if repl.session is None:
        repl.console.print("nothing to compact yet")
        return
    before = len(repl.session.messages)
    repl.session.replace_history(compact(repl.session.messages, keep_turns=2))
    repl.console.print(f"{before} messages -> {len(repl.session.messages)}")


def _sessions(repl: Repl, arg: str) -> None:
    """List this workspace's sessions."""
    from m2agent.agent.session import list_sessions

    for s in list_sessions(repl.runtime.sessions)[-20:]:
        repl.console.print(f"{s.id}  {s.title.splitlines()[0][:70] if s.title else ''}")


def _resume(repl: Repl, arg: str) -> None:
    """Continue an earlier session (/resume ID; the latest without ID)."""
    from m2agent.errors import UsageError

    try:
        session = repl.runtime.resume_session(arg.strip() or None)
    except UsageError as e:
        repl.console.print(Text(e.message, style="red"))
        return
    if repl.session is not None:
        repl.session.close()
    repl.session = session
    turns = len(session.turns)
    repl.console.print(f"resumed {session.id} ({turns} user messages)")


def _mcp(repl: Repl, arg: str) -> None:
    """MCP servers and their state; /mcp approve [NAME|all] starts this project's servers."""
    from m2agent.errors import UsageError
    from m2agent.extensions import open_extensions
    from m2agent.mcp.commands import approve

    words = arg.split()
    if words[:1] == ["approve"]:
        names = words[1:]
        try:
            told = approve(repl.settings, repl.workspace, [n for n in names if n != "all"],
                           every=names in ([], ["all"]))  # fmt: skip
        except UsageError as e:
            repl.console.print(Text(e.message, style="red"))
            return
        repl.console.print(told)
        repl.extensions.close()  # start again with the approved servers
        repl.extensions = repl.runtime.extensions = open_extensions(repl.settings, repl.workspace)
        repl.console.print("starting them; their tools join with your next message")
        return
    manager = repl.extensions.manager
    statuses = manager.statuses() if manager is not None else []
    if not statuses and not repl.extensions.plan.pending:
        repl.console.print("no MCP servers (see README: [mcp_servers.NAME] or .mcp.json)")
    for status in statuses:
        style = {"ready": "green", "failed": "red"}.get(status.state, "")
        repl.console.print(Text(f"{status.name:16} {status.state}: {status.detail}", style=style))
        if status.tools:
            repl.console.print(Text("    " + ", ".join(status.tools), style="dim"))
    for spec in repl.extensions.plan.pending:
        repl.console.print(Text(f"{spec.name:16} needs approval: {spec.describe()} "
                                f"(/mcp approve {spec.name})", style="yellow"))  # fmt: skip


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
    "mcp": _mcp,
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
