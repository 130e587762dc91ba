"""What the agent loop tells its front ends (REPL, headless output, CI, tests). Never printed
here. Events are facts; the one thing the loop asks (approval) is an `ApprovalRequest` in
`m2agent.agent.approvals`, yielded among them."""

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
    summary: str  # the tool's own one-line description of the call


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    name: str
    content: str
    is_error: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the user should know (compaction, a nudge to the model)."""

    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    """The model request failed and is sent again: the text streamed since the last step began
    is void (front ends take it back, so nothing is shown twice)."""

    attempt: int
    reason: str
    delay_s: float


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
class SessionStarted:
    """A task begins in a session: what front ends announce (stream-json's `init`)."""

    session_id: str
    cwd: str
    model: str
    tools: tuple[str, ...]
    mcp_servers: tuple[tuple[str, str], ...]  # (name, status)
    permission_mode: str


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
    | Notice
    | Retry
    | SnapshotTaken
    | StepUsage
    | SessionStarted
    | TaskDone
)


def event_json(event: Event) -> dict[str, Any]:
    """An event as one JSON object (for `--output-format stream-json` and session logs)."""
    from dataclasses import asdict

    return {"type": type(event).__name__, **asdict(event)}
