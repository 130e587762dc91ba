"""What a tool is: a name, a pydantic `Args` model (its schema is what the model reads), a
function, and annotations the approval policy decides from. Failures the model can fix are
results, not exceptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel


class ToolError(Exception):
    """A failure the model can act on; becomes `ToolResult(is_error=True)` with this text."""


@dataclass(frozen=True, slots=True)
class ToolAnnotations:
    read_only: bool  # never changes the workspace
    destructive: bool  # may delete or overwrite data


@dataclass(frozen=True, slots=True)
class ToolResult:
    content: str
    is_error: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)  # for the UI (diffs, exit codes)


class Tool(Protocol):
    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]
    annotations: ClassVar[ToolAnnotations]

    def run(self, args: Any) -> ToolResult: ...
