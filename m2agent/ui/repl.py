"""The interactive REPL: prompt_toolkit input, rich output, one agent turn per message.

Enter sends, Alt+Enter (Esc Enter) inserts a newline, pasted text arrives as one message,
`@path` attaches a file. Ctrl-C cancels the running turn (model stream and command) and keeps
the session; Ctrl-C twice at an empty prompt, or Ctrl-D, exits."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.key_binding import KeyBindings
from rich.console import Console
from rich.text import Text

from m2agent.agent.approvals import ApprovalReply, ApprovalRequest
from m2agent.agent.events import SnapshotTaken, event_json
from m2agent.agent.loop import Budget
from m2agent.agent.prompts import system_prompt
from m2agent.agent.session import SessionLog
from m2agent.backends.base import ModelBackend
from m2agent.runtime import build_runtime
from m2agent.settings import Settings
from m2agent.ui.render import EventPrinter
from m2agent.ui.slash import COMMANDS, run_command

PROMPT = "m2agent> "
_MENTION = re.compile(r"(?<!\S)@([\w./-]+)")


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")  # Alt+Enter arrives as Esc Enter
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


class ReplCompleter(Completer):
    """Slash commands at the start, `@path` mentions from the repository's files."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self._files: list[str] | None = None

    def files(self) -> list[str]:
        if self._files is None:
            done = subprocess.run(
                ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                cwd=self.workspace, capture_output=True, text=True,
            )  # fmt: skip
            self._files = done.stdout.splitlines() if done.returncode == 0 else []
        return self._files

    def get_completions(self, document: Document, complete_event: Any) -> Iterable[Completion]:
        text = document.text_before_cursor
        if text.startswith("/") and " " not in text:
            for name in COMMANDS:
                if name.startswith(text[1:]):
                    yield Completion("/" + name, start_position=-len(text))
            return
        word = text.rsplit(maxsplit=1)[-1] if text.strip() else ""
        if word.startswith("@"):
            for path in self.files():
                if path.startswith(word[1:]):
                    yield Completion("@" + path, start_position=-len(word))


class Repl:
    def __init__(
        self,
        settings: Settings,
        workspace: Path,
        backend: ModelBackend,
        console: Console,
        session_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.settings, self.workspace, self.console = settings, workspace, console
        self.backend = backend
        self.runtime = build_runtime(
            settings, workspace, backend, mode=settings.approval_mode, ask=self._ask
        )
        self.printer = EventPrinter(console)
        self.messages: list[dict[str, Any]] = [
            {
                "role": "system",
                "content": system_prompt(workspace, user_dir=settings.config_dir, home=Path.home()),
            }
        ]
        self.log: SessionLog | None = None
        self.first_snapshot: int | None = None
        self.last_rate = 0.0
        self.started = time.monotonic()
        self.model_seconds = 0.0  # time spent in turns
        history = self.runtime.project / "history"
        history.parent.mkdir(parents=True, exist_ok=True)
        self.session: PromptSession[str] = PromptSession(
            history=FileHistory(str(history)),
            key_bindings=key_bindings(),
            completer=ReplCompleter(workspace),
            bottom_toolbar=self._toolbar,
            **(session_kwargs or {}),
        )

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        self.console.print(
            Text(f"m2agent in {self.workspace} — /help for commands, Ctrl-D to exit", style="dim")
        )
        interrupted_at_empty = False
        while True:
            try:
                text = self.session.prompt(PROMPT)
            except KeyboardInterrupt:
                if interrupted_at_empty:
                    return 0
                interrupted_at_empty = True
                self.console.print(Text("(Ctrl-C again or Ctrl-D to exit)", style="dim"))
                continue
            except EOFError:
                return 0
            interrupted_at_empty = False
            if not text.strip():
                continue
            if text.startswith("/"):
                if run_command(self, text) == "exit":
                    return 0
                continue
            self.turn(text)

    def turn(self, text: str) -> None:
        """One user message and everything the agent does about it; Ctrl-C cancels it."""
        if self.log is None:
            self.log = SessionLog(self.runtime.project / "sessions", text, self.workspace)
            self.log.write("message", self.messages[0])
        message = {"role": "user", "content": self._with_mentions(text)}
        self.messages.append(message)
        self.log.write("message", message)
        count = len(self.messages)
        started, generated_before = time.monotonic(), self.printer.completion_tokens
        budget = Budget(self.settings.max_steps, self.settings.max_minutes * 60)
        try:
            for event in self.runtime.agent.run(self.messages, budget):
                self.printer.render(event)
                self.log.write("event", event_json(event))
                if isinstance(event, SnapshotTaken):
                    self.log.write("snapshot", {"number": event.number, "label": event.label})
                    if self.first_snapshot is None:
                        self.first_snapshot = event.number
        except KeyboardInterrupt:
            self.printer.interrupt()
            self._answer_dangling_calls()
            self.console.print(Text("interrupted", style="yellow"))
        finally:
            for msg in self.messages[count:]:
                self.log.write("message", msg)
        elapsed = time.monotonic() - started
        self.model_seconds += elapsed
        generated = self.printer.completion_tokens - generated_before
        self.last_rate = generated / elapsed if elapsed > 0 else 0.0

    # -- helpers ------------------------------------------------------------------------------

    def _answer_dangling_calls(self) -> None:
        """After a cancel, every tool call in history still gets exactly one answer."""
        answered = {m.get("tool_call_id") for m in self.messages if m.get("role") == "tool"}
        for message in list(self.messages):
            for call in message.get("tool_calls") or []:
                if call["id"] not in answered:
                    self.messages.append(
                        {
                            "role": "tool",
                            "tool_call_id": call["id"],
                            "content": "cancelled by the user",
                        }
                    )

    def _with_mentions(self, text: str) -> str:
        attached = []
        for name in dict.fromkeys(_MENTION.findall(text)):
            path = (self.workspace / name).resolve()
            if path.is_file() and path.is_relative_to(self.workspace):
                body = path.read_text(encoding="utf-8", errors="replace")[:50_000]
                attached.append(f'<file path="{name}">\n{body}\n</file>')
        return text if not attached else text + "\n\n" + "\n".join(attached)

    def _ask(self, request: ApprovalRequest) -> ApprovalReply:
        shown = request.arguments.get("command") or request.arguments.get("file_path") or ""
        while True:
            answer = (
                self.session.prompt(
                    f"Allow {request.tool} {str(shown)[:80]}? [y]es [n]o [a]lways [m]ode auto: "
                )
                .strip()
                .lower()
            )
            if answer in ("y", "yes"):
                return ApprovalReply("yes")
            if answer in ("n", "no", ""):
                return ApprovalReply("no")
            if answer in ("a", "always"):
                return ApprovalReply("always")
            if answer in ("m", "mode"):
                return ApprovalReply("yes", new_mode="auto")

    def _toolbar(self) -> str:
        context = f"{min(100, 100 * self.printer.context_tokens // 196_608)}%"
        return (
            f" {self.settings.model} via {self.backend.name} │ context {context} │ "
            f"{self.last_rate:.0f} tok/s │ sandbox {self.settings.sandbox} │ "
            f"mode {self.runtime.agent.approvals.mode} │ {self._branch()}"
        )

    def _branch(self) -> str:
        head = self.workspace / ".git" / "HEAD"
        try:
            ref = head.read_text().strip()
        except OSError:
            return "no git"
        return ref.removeprefix("ref: refs/heads/") if ref.startswith("ref:") else ref[:8]
