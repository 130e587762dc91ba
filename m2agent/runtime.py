"""Wiring one agent for a workspace: backend, sandboxed tools, approvals, undo snapshots.
Shared by `m2agent fix` and the REPL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from m2agent.agent.approvals import ApprovalPolicy, ApprovalReply, ApprovalRequest, Mode, RuleStore
from m2agent.agent.loop import Agent
from m2agent.backends.base import ModelBackend
from m2agent.errors import SandboxError
from m2agent.settings import Settings
from m2agent.tools.base import Tool
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.defaults import default_tools
from m2agent.tools.sandbox.policy import SandboxPolicy
from m2agent.tools.shell import CommandRunner, SandboxUnavailable
from m2agent.tools.todo import TodoList
from m2agent.tools.workspace import Workspace

Ask = Callable[[ApprovalRequest], ApprovalReply]


@dataclass
class Runtime:
    agent: Agent
    runner: CommandRunner
    checkpoints: Checkpoints
    todos: TodoList
    project: Path  # this workspace's state folder (sessions, snapshots, approvals)


def build_runtime(
    settings: Settings,
    workspace: Path,
    backend: ModelBackend,
    *,
    mode: Mode,
    ask: Ask | None,
    extra_tools: Sequence[Tool] = (),
) -> Runtime:
    """`extra_tools`: tools beyond the built-in ones (MCP servers')."""
    # Raises SandboxError when commands could not run safely here.
    policy = SandboxPolicy.for_workspace(workspace, allow_network=settings.allow_network)
    runner = CommandRunner(policy, settings.sandbox)
    try:
        runner.backend()
    except SandboxUnavailable as e:
        raise SandboxError(str(e)) from None
    project = settings.project_dir(workspace)
    checkpoints = Checkpoints(workspace, project / "snapshots.git")
    todos = TodoList()
    tools = default_tools(
        Workspace(workspace), todos, sandbox=settings.sandbox, allow_network=settings.allow_network
    ).with_tools(extra_tools)
    approvals = ApprovalPolicy(mode, RuleStore(project / "approvals.json"), ask)
    return Runtime(
        Agent(backend, tools, approvals, checkpoints), runner, checkpoints, todos, project
    )
