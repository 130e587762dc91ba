"""`m2agent mcp list | approve | revoke`: what is configured, what starts, and the one-time
approval of a project's `.mcp.json` servers. Returns text; the CLI prints it."""

from __future__ import annotations

from pathlib import Path

from m2agent.errors import UsageError
from m2agent.mcp.manager import ServerStatus
from m2agent.mcp.startup import approvals_for, plan, start
from m2agent.settings import Settings


def list_servers(settings: Settings, workspace: Path, *, check: bool = False) -> str:
    """One line per configured server; with `check`, the approved ones are started and their
    state and tools shown."""
    warnings = "".join(f"warning: {w}\n" for w in settings.warnings)
    if not settings.mcp_servers:
        return warnings + (
            "no MCP servers configured (add [mcp_servers.NAME] to the user config.toml, "
            "or a .mcp.json to the project)"
        )
    started = plan(settings, workspace)
    statuses: dict[str, ServerStatus] = {}
    if check and started.approved:
        manager = start(settings, workspace, started.approved)
        try:
            manager.wait_ready()
            statuses = {s.name: s for s in manager.statuses()}
        finally:
            manager.stop()
    lines = []
    for spec in settings.mcp_servers:
        if spec in started.pending:
            state = "needs approval"
        elif not spec.enabled:
            state = "disabled"
        elif spec.name in statuses:
            status = statuses[spec.name]
            state = f"{status.state}: {status.detail}"
        else:
            state = "will start"
        network = ", network allowed" if spec.allow_network else ""
        where = f"{spec.source}, {spec.transport}{network}"
        lines.append(f"{spec.name:16} [{where}] {state}\n    {spec.describe()}")
        if spec.name in statuses and statuses[spec.name].tools:
            lines.append("    tools: " + ", ".join(statuses[spec.name].tools))
    return warnings + "\n".join(lines)


def approve(settings: Settings, workspace: Path, names: list[str], *, every: bool) -> str:
    pending = plan(settings, workspace).pending
    chosen = list(pending) if every else [s for s in pending if s.name in names]
    project = {s.name for s in settings.mcp_servers if s.source == "project"}
    unknown = [n for n in names if n not in project]
    if unknown:
        raise UsageError(
            f"no project MCP server named {', '.join(unknown)}; the project's servers: "
            f"{', '.join(sorted(project)) or 'none'}"
        )
    if not names and not every:
        raise UsageError("name the servers to approve, or pass --all")
    if not chosen:
        return "nothing to approve: those servers are approved already"
    approvals_for(settings, workspace).approve(chosen)
    shown = "\n".join(f"  {s.name}: {s.describe()}" for s in chosen)
    return f"approved for {workspace.resolve()}:\n{shown}"


def revoke(settings: Settings, workspace: Path, names: list[str]) -> str:
    if not names:
        raise UsageError("name the servers whose approval to revoke")
    approvals_for(settings, workspace).revoke(names)
    return f"approval revoked: {', '.join(names)}"
