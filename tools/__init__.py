"""The sandboxed tools the model uses on a repository (files, search, shell, plan, undo).

Never imports torch, rich, prompt_toolkit or the agent side of m2agent. The public names load
on first use, so that the sandbox launcher (`m2agent.tools.sandbox.launcher`, started before
every command under Landlock) imports only what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m2agent.tools.base import Description, Tool, ToolAnnotations, ToolError, ToolResult
    from m2agent.tools.defaults import default_tools
    from m2agent.tools.registry import ToolRegistry
    from m2agent.tools.workspace import Workspace

_PUBLIC = {
    "Description": "m2agent.tools.base",
    "Tool": "m2agent.tools.base",
    "ToolAnnotations": "m2agent.tools.base",
    "ToolError": "m2agent.tools.base",
    "ToolResult": "m2agent.tools.base",
    "ToolRegistry": "m2agent.tools.registry",
    "Workspace": "m2agent.tools.workspace",
    "default_tools": "m2agent.tools.defaults",
}

__all__ = [
    "Description",
    "Tool",
    "ToolAnnotations",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "Workspace",
    "default_tools",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'm2agent.tools' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
