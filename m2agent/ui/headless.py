"""Headless output of agent events: short progress lines on stderr (text and json modes), or
one JSON object per event on stdout (`stream-json`)."""

from __future__ import annotations

import json
import sys
from typing import Literal, TextIO

from m2agent.agent.events import (
    AnswerText,
    Event,
    Notice,
    ReasoningText,
    SnapshotTaken,
    TaskDone,
    ToolFinished,
    ToolStarted,
    event_json,
)

OutputFormat = Literal["text", "json", "stream-json"]


class HeadlessRenderer:
    def __init__(self, output: OutputFormat, out: TextIO | None = None, err: TextIO | None = None):
        self.output = output
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self._in_reasoning = False

    def render(self, event: Event) -> None:
        if self.output == "stream-json":
            self.out.write(json.dumps(event_json(event), ensure_ascii=False, default=str) + "\n")
            self.out.flush()
            return
        if isinstance(event, ReasoningText):
            return  # reasoning stays in the session log; progress lines stay short
        if isinstance(event, AnswerText):
            return
        if isinstance(event, ToolStarted):
            target = (
                event.arguments.get("command")
                or event.arguments.get("file_path")
                or event.arguments.get("pattern")
                or ""
            )
            self._line(f"-> {event.name} {str(target)[:120]}")
        elif isinstance(event, ToolFinished):
            first = event.content.strip().splitlines()[:1]
            mark = "x" if event.is_error else "ok"
            self._line(f"   [{mark}] {first[0][:160] if first else ''}")
        elif isinstance(event, SnapshotTaken):
            self._line(f"   snapshot {event.number} ({event.label})")
        elif isinstance(event, Notice):
            self._line(f"!! {event.text}")
        elif isinstance(event, TaskDone) and event.answer:
            self._line(f"model: {event.answer.strip()[:500]}")

    def note(self, text: str) -> None:
        if self.output != "stream-json":
            self._line(f"note: {text}")

    def _line(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()
