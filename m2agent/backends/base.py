"""The backend interface: typed messages in, a stream of events out, ending in the assistant
message exactly as the model produced it (reasoning kept byte for byte) and its usage."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from m2agent.agent.messages import AssistantMessage, Message, Usage
from m2agent.engine.protocol import ContentDelta, ReasoningDelta


@dataclass(frozen=True, slots=True)
class Retrying:
    """The request failed and is being sent again: the partial output streamed so far is void
    (the next attempt starts over)."""

    attempt: int
    reason: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class TurnDone:
    message: AssistantMessage
    usage: Usage
    finish_reason: str = "stop"


StreamEvent: TypeAlias = ReasoningDelta | ContentDelta | Retrying | TurnDone


class ModelBackend(Protocol):
    name: str

    def stream(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        """Events of one assistant turn; the last one is `TurnDone`. Raises BackendError
        (naming the endpoint) when the request fails for good."""
        ...
