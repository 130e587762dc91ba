"""What a session adds to the built-in tools from the user's configuration: MCP servers (started
in the background, the approved ones only) and hooks. One object per session; `close()` stops
the servers. Front ends read `notes()` (what did not start, and why) and `server_states()`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from m2agent.hooks import HookRunner
from m2agent.mcp.manager import McpManager
from m2agent.mcp.startup import StartPlan, plan, start
from m2agent.mcp.tool import McpTool
from m2agent.settings import Settings

# ServerStatus.state -> the word Claude Code's init event uses.
_INIT_STATUS = {
    "starting": "pending",
    "ready": "connected",
    "failed": "failed",
    "disabled": "disabled",
    "stopped": "stopped",
}


@dataclass
class Extensions:
    settings: Settings
    workspace: Path
    plan: StartPlan
    manager: McpManager | None

    def wait_for_servers(self, timeout_s: float | None = None) -> None:
        """Block until every server started or failed (headless runs wait; the REPL does not)."""
        if self.manager is not None:
            self.manager.wait_ready(timeout_s)

    def tools(self) -> list[McpTool]:
        """The MCP tools of the servers ready now."""
        return self.manager.tools() if self.manager is not None else []

    def server_states(self) -> list[dict[str, str]]:
        """Every configured server as `{"name", "status"}` (Claude Code's init event)."""
        states = [
            {"name": s.name, "status": _INIT_STATUS[s.state]}
            for s in (self.manager.statuses() if self.manager is not None else [])
        ]
        states += [{"name": s.name, "status": "needs-approval"} for s in self.plan.pending]
        return states

    def notes(self) -> list[str]:
        """What the user should know: ignored config, unapproved and failed servers."""
        found = list(self.settings.warnings)
        if self.plan.pending:
            found.append(self.plan.pending_note())
        if self.manager is not None:
            found += [
                f"MCP server {s.name} {s.state}: {s.detail}"
                for s in self.manager.statuses()
                if s.state == "failed"
            ]
        return found

    def hooks(
        self, session_id: str, transcript_path: Path | None, permission_mode: str
    ) -> HookRunner | None:
        """The session's hook runner, or None when no hooks are configured."""
        if not self.settings.hooks:
            return None
        return HookRunner(
            self.settings.hooks,
            session_id=session_id,
            transcript_path=transcript_path,
            cwd=self.workspace,
            permission_mode=permission_mode,
        )

    def close(self) -> None:
        if self.manager is not None:
            self.manager.stop()

    def __enter__(self) -> Extensions:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_extensions(settings: Settings, workspace: Path) -> Extensions:
    """Start the session's approved MCP servers in the background (returns at once)."""
    started = plan(settings, workspace)
    manager = start(settings, workspace, started.approved) if started.approved else None
    return Extensions(settings, workspace, started, manager)
