"""What the agent loop tells its front-ends (REPL, headless output, tests). Never printed here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class ReasoningText:
    text: str


@dataclass(frozen=True, slots=True)
class AnswerText:
    text: str


@dataclass(frozen=True, slots=True)
class ToolStarted:
    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    name: str
    content: str
    is_error: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ApprovalRequested:
    """A call needs the user's yes; the policy's callback is asking now."""

    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the user should know (a retry, a snapshot, a nudge to the model)."""

    text: str


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    """The workspace was snapshotted before a change (an undo point)."""

    number: int
    label: str


@dataclass(frozen=True, slots=True)
class StepUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


@dataclass(frozen=True, slots=True)
class TaskDone:
    reason: Literal["answered", "max_steps", "max_time", "max_tokens"]
    steps: int
    answer: str


Event = (
    ReasoningText
    | AnswerText
    | ToolStarted
    | ToolFinished
    | ApprovalRequested
    | Notice
    | SnapshotTaken
    | StepUsage
    | TaskDone
)


def event_json(event: Event) -> dict[str, Any]:
    """An event as one JSON object (for `--output-format stream-json` and session logs)."""
    from dataclasses import asdict

    return {"type": type(event).__name__, **asdict(event)}
