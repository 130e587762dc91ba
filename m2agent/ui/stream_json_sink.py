"""The agent loop's events as Claude Code's stream-json, one JSON object per line: like Claude
Code, each block of a model turn (thinking + text, then each tool_use) is its own `assistant`
event sharing the turn's message id, and each tool result its own `user` event. The caller
writes the `system` init first (`start`) and the `result` last (`finish`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from m2agent.agent.events import (
    AnswerText,
    Event,
    ReasoningText,
    StepUsage,
    TaskDone,
    ToolFinished,
    ToolStarted,
)
from m2agent.stream_json import (
    ResultSubtype,
    StreamJsonEncoder,
    ToolOutcome,
    ToolUse,
    Usage,
    dumps,
    new_message_id,
)

# TaskDone reasons -> the result subtype Claude Code's consumers know.
SUBTYPES: Mapping[str, ResultSubtype] = {
    "answered": "success",
    "max_steps": "error_max_turns",
    "max_time": "error_during_execution",
    "max_tokens": "error_during_execution",
}


class StreamJsonSink:
    def __init__(self, encoder: StreamJsonEncoder, out: TextIO) -> None:
        self.encoder, self.out = encoder, out
        self.started = time.monotonic()
        self.turns = 0
        self.total = Usage()
        self.done: TaskDone | None = None
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
        self._write(
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
            self._write(
                self.encoder.assistant(
                    tool_uses=[use], usage=self._step, message_id=self._message_id
                )
            )
        elif isinstance(event, ToolFinished):
            outcome = ToolOutcome(event.call_id, event.content, event.is_error)
            self._write(self.encoder.tool_results([outcome]))
        elif isinstance(event, TaskDone):
            self.done = event

    def discard_partial(self) -> None:
        """The model request is being retried: the text streamed since the step began is void."""
        self._reasoning.clear()
        self._text.clear()

    def finish(
        self,
        *,
        is_error: bool,
        result: str | None = None,
        subtype: ResultSubtype | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write the `result` event (and return it): by default its subtype and text come from
        the loop's last TaskDone."""
        done = self.done
        chosen = subtype or (SUBTYPES[done.reason] if done else "error_during_execution")
        event = self.encoder.result(
            subtype=chosen,
            is_error=is_error,
            duration_ms=int((time.monotonic() - self.started) * 1000),
            num_turns=self.turns,
            result=result if result is not None else (done.answer if done else ""),
            usage=self.total,
            extra=extra,
        )
        self._write(event)
        return event

    def _end_model_turn(self, usage: StepUsage) -> None:
        self.turns += 1
        self._step = Usage(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens)
        self.total = Usage(
            self.total.input_tokens + usage.prompt_tokens,
            self.total.output_tokens + usage.completion_tokens,
            self.total.cache_read_input_tokens + usage.cached_tokens,
        )
        self._message_id = new_message_id()
        reasoning, text = "".join(self._reasoning), "".join(self._text)
        self.discard_partial()
        if reasoning or text:
            self._write(
                self.encoder.assistant(
                    reasoning=reasoning, text=text, usage=self._step, message_id=self._message_id
                )
            )

    def _write(self, event: Mapping[str, Any]) -> None:
        self.out.write(dumps(event) + "\n")
        self.out.flush()
