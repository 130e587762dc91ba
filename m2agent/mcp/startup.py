"""Which configured MCP servers a session starts: the user's own, and a project's `.mcp.json`
servers the user approved for this project (by fingerprint); the others wait for approval
(`m2agent mcp approve`, or the REPL's question). `--yes` never approves them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m2agent.mcp.config import ProjectApprovals, ServerSpec
from m2agent.mcp.manager import McpManager
from m2agent.settings import Settings


@dataclass(frozen=True, slots=True)
class StartPlan:
    approved: tuple[ServerSpec, ...]  # start these
    pending: tuple[ServerSpec, ...]  # project servers nobody approved (or changed since)

    def pending_note(self) -> str:
        """What to tell the user about the servers that will not start ("" if none)."""
        if not self.pending:
            return ""
        names = ", ".join(s.name for s in self.pending)
        return (
            f"project MCP server(s) from .mcp.json not started until you approve them: {names} "
            "(see `m2agent mcp list`, then `m2agent mcp approve NAME` or `--all`)"
        )


def approvals_for(settings: Settings, workspace: Path) -> ProjectApprovals:
    return ProjectApprovals(settings.project_dir(workspace) / "mcp-approvals.json")


def plan(settings: Settings, workspace: Path) -> StartPlan:
    approvals = approvals_for(settings, workspace)
    approved: list[ServerSpec] = []
    pending: list[ServerSpec] = []
    for spec in settings.mcp_servers:
        (approved if approvals.is_approved(spec) else pending).append(spec)
    return StartPlan(tuple(approved), tuple(pending))


def start(settings: Settings, workspace: Path, specs: tuple[ServerSpec, ...]) -> McpManager:
    """Start `specs` in the background (returns at once); the caller stops the manager."""
    manager = McpManager(
        specs,
        workspace,
        sandbox=settings.sandbox,
        policy=settings.sandbox_policy(workspace),
        log_dir=settings.project_dir(workspace) / "mcp-logs",
    )
    manager.start()
    return manager
