"""The tool set the model sees, wired to one workspace."""

from __future__ import annotations

from m2agent.tools.files import EditTool, ReadTool, WriteTool
from m2agent.tools.registry import ToolRegistry
from m2agent.tools.sandbox.policy import SandboxPolicy
from m2agent.tools.search import GlobTool, GrepTool
from m2agent.tools.shell import BashTool, CommandRunner, SandboxMode
from m2agent.tools.todo import TodoList, TodoWriteTool
from m2agent.tools.workspace import Workspace


def default_tools(
    workspace: Workspace,
    todos: TodoList,
    *,
    sandbox: SandboxMode = "auto",
    allow_network: bool = False,
    runner: CommandRunner | None = None,
) -> ToolRegistry:
    """Read, Write, Edit, Bash, Grep, Glob and TodoWrite, in Claude Code's vocabulary. Bash runs
    through `runner` when given (its policy), else a default policy for the workspace."""
    if runner is None:
        policy = SandboxPolicy.for_workspace(workspace.path, allow_network=allow_network)
        runner = CommandRunner(policy, sandbox)
    return ToolRegistry(
        [
            ReadTool(workspace),
            WriteTool(workspace),
            EditTool(workspace),
            BashTool(runner),
            GrepTool(workspace),
            GlobTool(workspace),
            TodoWriteTool(todos),
        ]
    )
