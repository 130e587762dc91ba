"""The sandboxed tools the model uses on a repository (files, search, shell, plan, undo).

Never imports torch, rich, prompt_toolkit or the agent side of m2agent.
"""

from __future__ import annotations

from m2agent.tools.base import Tool, ToolAnnotations, ToolError, ToolResult
from m2agent.tools.files import EditTool, ReadTool, WriteTool
from m2agent.tools.registry import ToolRegistry
from m2agent.tools.sandbox.policy import SandboxPolicy
from m2agent.tools.search import GlobTool, GrepTool
from m2agent.tools.shell import BashTool, CommandRunner, SandboxMode
from m2agent.tools.todo import TodoList, TodoWriteTool
from m2agent.tools.workspace import Workspace

__all__ = [
    "Tool",
    "ToolAnnotations",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "Workspace",
    "default_tools",
]


def default_tools(
    workspace: Workspace,
    todos: TodoList,
    *,
    sandbox: SandboxMode = "auto",
    allow_network: bool = False,
) -> ToolRegistry:
    """The tools the model sees, in Claude Code's vocabulary."""
    runner = CommandRunner(
        SandboxPolicy.for_workspace(workspace.path, allow_network=allow_network), sandbox
    )
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
