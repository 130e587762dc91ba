"""Headless front end: the event sink of `fix`, `-p` and `ci`. Short progress lines on stderr
(text and json formats), or one JSON object per event on stdout (`stream-json`). Approval
requests are answered here: on a terminal, by asking (the tool's preview first); otherwise no,
with the reason the model reads."""

from __future__ import annotations

import json
import sys
from typing import Literal, TextIO

from m2agent.agent.approvals import ApprovalReply, ApprovalRequest
from m2agent.agent.events import (
    AnswerText,
    Notice,
    ReasoningText,
    Retry,
    SnapshotTaken,
    TaskDone,
    ToolFinished,
    ToolStarted,
    event_json,
)
from m2agent.agent.loop import Item

OutputFormat = Literal["text", "json", "stream-json"]
ANSWERS: dict[str, Literal["yes", "no", "always"]] = {"y": "yes", "n": "no", "a": "always"}


class HeadlessFrontEnd:
    def __init__(
        self,
        output: OutputFormat,
        *,
        interactive: bool = False,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        """`interactive`: approval requests are asked on the terminal (stdin and stderr)."""
        self.output, self.interactive = output, interactive
        self.out, self.err = out or sys.stdout, err or sys.stderr

    def __call__(self, item: Item) -> None:
        if isinstance(item, ApprovalRequest):
            self._approval(item)
            return
        if self.output == "stream-json":
            self._json(event_json(item))
            return
        if isinstance(item, ReasoningText | AnswerText):
            return  # reasoning stays in the session; progress lines stay short
        if isinstance(item, ToolStarted):
            self._line(f"-> {item.name} {item.summary[:120]}")
        elif isinstance(item, ToolFinished):
            first = item.content.strip().splitlines()[:1]
            mark = "x" if item.is_error else "ok"
            self._line(f"   [{mark}] {first[0][:160] if first else ''}")
        elif isinstance(item, SnapshotTaken):
            self._line(f"   undo point {item.number} ({item.label})")
        elif isinstance(item, Retry):
            self._line(f"!! model request failed ({item.reason}); retry in {item.delay_s:.1f}s")
        elif isinstance(item, Notice):
            self._line(f"note: {item.text}")
        elif isinstance(item, TaskDone) and item.answer:
            self._line(f"model: {item.answer.strip()[:500]}")

    def _approval(self, request: ApprovalRequest) -> None:
        if not self.interactive:
            request.answer(ApprovalReply("no", why=(
                f"{request.tool} needs approval and nobody can approve here (headless); the "
                "user can allow it with --yes or --mode auto-edit/auto"
            )))  # fmt: skip
            if self.output == "stream-json":
                self._json(request.as_json())
            return
        self._line(f"\n{request.tool} {request.reason}: {request.summary}")
        if request.preview:
            self._line(request.preview.rstrip("\n"))
        from prompt_toolkit.output import create_output

        from m2agent.ui.repl import ask_key

        key = ask_key("Allow? [y]es [n]o [a]lways: ", "yna", output=create_output(self.err))
        self._line(f"-> {ANSWERS[key]}")
        request.answer(ApprovalReply(ANSWERS[key]))

    def _json(self, data: dict[str, object]) -> None:
        self.out.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
        self.out.flush()

    def _line(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()
