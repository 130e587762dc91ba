"""Headless front end: the event sink of `fix`, `-p` and `ci`. Short progress lines on stderr
(text and json formats), or Claude Code's stream-json on stdout (`stream-json`). Approval
requests are answered here: on a terminal, by asking (the tool's preview first); otherwise no,
with the reason the model reads. The final result is printed here too (`finish`, `fail`)."""

from __future__ import annotations

import sys
from typing import Any, Literal, TextIO

from m2agent.agent.approvals import ApprovalReply, ApprovalRequest
from m2agent.agent.events import (
    AnswerText,
    Notice,
    ReasoningText,
    Retry,
    SessionStarted,
    SnapshotTaken,
    TaskDone,
    ToolFinished,
    ToolStarted,
)
from m2agent.agent.loop import Item
from m2agent.fix import FixResult, error_event, error_json, result_event, result_json
from m2agent.stream_json import StreamJsonEncoder, dumps
from m2agent.ui.stream_json_sink import StreamJsonSink

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
        self.session_id, self.model = "", ""
        self._stream: StreamJsonSink | None = None
        self._inputs: dict[str, dict[str, Any]] = {}  # call id -> arguments, this turn
        self.denials: list[dict[str, Any]] = []  # refused calls (the result's permission_denials)

    def __call__(self, item: Item) -> None:
        if isinstance(item, ApprovalRequest):
            self._approval(item)
            return
        if isinstance(item, SessionStarted):
            self._started(item)
            return
        if isinstance(item, ToolStarted):
            self._inputs[item.call_id] = item.arguments
        if self.output == "stream-json":
            if self._stream is not None and isinstance(item, Retry):
                self._stream.discard_partial()
            elif self._stream is not None:
                self._stream.render(item)
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
            self._denied(request)
            return
        self._line(f"\n{request.tool} {request.reason}: {request.summary}")
        if request.preview:
            self._line(request.preview.rstrip("\n"))
        from prompt_toolkit.output import create_output

        from m2agent.ui.repl import ask_key

        key = ask_key("Allow? [y]es [n]o [a]lways: ", "yna", output=create_output(self.err))
        self._line(f"-> {ANSWERS[key]}")
        request.answer(ApprovalReply(ANSWERS[key]))
        if ANSWERS[key] == "no":
            self._denied(request)

    def _denied(self, request: ApprovalRequest) -> None:
        self.denials.append(
            {
                "tool_name": request.tool,
                "tool_use_id": request.call_id,
                "tool_input": self._inputs.get(request.call_id, {}),
            }
        )

    def finish(self, result: FixResult, *, flat_json: bool = False) -> None:
        """The result on stdout: Claude Code's result object (json, stream-json), or
        m2agent's own flat object (`--json`). Text output is the caller's."""
        if flat_json:
            self.out.write(result_json(result) + "\n")
        elif self.output != "text":
            self.out.write(dumps(result_event(result, self.model, self.denials)) + "\n")
        self.denials = []
        self.out.flush()

    def fail(self, message: str, exit_code: int, *, flat_json: bool = False) -> None:
        """A task that could not run or failed, as the last line (json and stream-json)."""
        if flat_json:
            self.out.write(error_json(message, exit_code) + "\n")
        elif self.output != "text":
            event = error_event(message, exit_code, self.session_id, self.model)
            self.out.write(dumps(event) + "\n")
        self.out.flush()

    def _started(self, item: SessionStarted) -> None:
        self.session_id, self.model = item.session_id, item.model
        if self.output != "stream-json" or self._stream is not None:
            return  # one init per run, however many turns
        self._stream = StreamJsonSink(StreamJsonEncoder(item.session_id, item.model), self.out)
        self._stream.start(
            cwd=item.cwd,
            tools=item.tools,
            mcp_servers=[{"name": name, "status": status} for name, status in item.mcp_servers],
            permission_mode=item.permission_mode,
        )

    def _line(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()
