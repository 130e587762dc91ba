"""What a tool is: a name, a pydantic `Args` model (its schema is what the model reads), a
function, annotations the approval policy decides from, and a description of each call
(`describe`): what it is in one line, a preview of the change, and the shell command it runs.
Nothing outside a tool knows its argument names. Failures the model can fix are results, not
exceptions."""

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
class Description:
    """One call, as a person approving it needs to see it."""

    summary: str  # one line: the file, the pattern, the command
    preview: str | None = None  # the change it would make (a diff), or what it would run, where
    command: str | None = None  # the shell command it runs (approval rules match on it)


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

    def describe(self, args: Any) -> Description:
        """What this call is, without running it (no side effects; may read files)."""
        ...

    def run(self, args: Any) -> ToolResult: ...
