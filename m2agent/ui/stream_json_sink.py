"""The agent loop's events as Claude Code's stream-json, one JSON object per line: like Claude
Code, each block of a model turn (thinking + text, then each tool_use) is its own `assistant`
event sharing the turn's message id, and each tool result its own `user` event. The caller
writes the `system` init first (`start`) and the `result` last (`write`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from m2agent.agent.events import (
    AnswerText,
    Event,
    ReasoningText,
    StepUsage,
    ToolFinished,
    ToolStarted,
)
from m2agent.stream_json import (
    StreamJsonEncoder,
    ToolOutcome,
    ToolUse,
    Usage,
    dumps,
    new_message_id,
)


class StreamJsonSink:
    def __init__(self, encoder: StreamJsonEncoder, out: TextIO) -> None:
        self.encoder, self.out = encoder, out
        self._reasoning: list[str] = []
        self._text: list[str] = []
        self._step = Usage()
        self._message_id = new_message_id()

    def start(
        self,
        *,
        cwd: str,
        tools: Sequence[str],
        mcp_servers: Sequence[Mapping[str, str]],
        permission_mode: str,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.write(
            self.encoder.init(
                cwd=cwd,
                tools=tools,
                mcp_servers=mcp_servers,
                permission_mode=permission_mode,
                extra=extra,
            )
        )

    def render(self, event: Event) -> None:
        if isinstance(event, ReasoningText):
            self._reasoning.append(event.text)
        elif isinstance(event, AnswerText):
            self._text.append(event.text)
        elif isinstance(event, StepUsage):
            self._end_model_turn(event)
        elif isinstance(event, ToolStarted):
            use = ToolUse(event.call_id, event.name, event.arguments)
            self.write(
                self.encoder.assistant(
                    tool_uses=[use], usage=self._step, message_id=self._message_id
                )
            )
        elif isinstance(event, ToolFinished):
            outcome = ToolOutcome(event.call_id, event.content, event.is_error)
            self.write(self.encoder.tool_results([outcome]))

    def discard_partial(self) -> None:
        """The model request is being retried: the text streamed since the step began is void."""
        self._reasoning.clear()
        self._text.clear()

    def _end_model_turn(self, usage: StepUsage) -> None:
        self._step = Usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        self._message_id = new_message_id()
        reasoning, text = "".join(self._reasoning), "".join(self._text)
        self.discard_partial()
        if reasoning or text:
            self.write(
                self.encoder.assistant(
                    reasoning=reasoning, text=text, usage=self._step, message_id=self._message_id
                )
            )

    def write(self, event: Mapping[str, Any]) -> None:
        """One event (the final `result`, built by the caller) as one line."""
        self.out.write(dumps(event) + "\n")
        self.out.flush()
