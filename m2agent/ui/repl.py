"""The interactive REPL: prompt_toolkit input, rich output, one user turn of the session per
message. It answers the loop's approval requests (the tool's preview first, then one key:
y / n / a / m), and survives the model: a failed request prints its error and keeps the session
and the prompt; with no model configured it starts anyway and says how to set one.

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
from prompt_toolkit.application import Application
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import Layout
from prompt_toolkit.layout.containers import Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.output import Output
from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text

from m2agent.agent.approvals import ApprovalReply, ApprovalRequest
from m2agent.agent.loop import Budget
from m2agent.agent.session import Session
from m2agent.backends.base import ModelBackend
from m2agent.errors import M2AgentError
from m2agent.extensions import open_extensions
from m2agent.runtime import build_runtime
from m2agent.settings import Settings
from m2agent.ui.render import EventPrinter
from m2agent.ui.slash import COMMANDS, run_command

PROMPT = "m2agent> "
_MENTION = re.compile(r"(?<!\S)@([\w./-]+)")
NO_MODEL_HINT = (
    "No model is configured. Set one with `/model URL NAME` (an OpenAI-compatible endpoint, "
    "e.g. /model http://127.0.0.1:8000/v1 MiniMaxAI/MiniMax-M2), or start with "
    "`m2agent --endpoint URL --model NAME`, or `--model PATH` to a local checkpoint."
)
APPROVAL_KEYS = {"y": "yes", "n": "no", "a": "always", "m": "mode"}


def key_bindings() -> KeyBindings:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")  # Alt+Enter arrives as Esc Enter
    def _newline(event: Any) -> None:
        event.current_buffer.insert_text("\n")

    return bindings


def ask_key(
    question: str, keys: Iterable[str], *, input: Input | None = None, output: Output | None = None
) -> str:
    """One key press among `keys`, no Enter needed; Ctrl-C, Ctrl-D and Escape answer "n"."""
    bindings = KeyBindings()
    for key in keys:
        bindings.add(key)(lambda event, key=key: event.app.exit(result=key))
    for key in ("c-c", "c-d", "escape"):
        bindings.add(key)(lambda event: event.app.exit(result="n"))
    app: Application[str] = Application(
        layout=Layout(Window(FormattedTextControl(question), height=1)),
        key_bindings=bindings,
        full_screen=False,
        input=input,
        output=output,
    )
    return app.run()


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
        backend: ModelBackend | None,
        console: Console,
        session_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.settings, self.workspace, self.console = settings, workspace, console
        self.backend = backend
        self.extensions = open_extensions(settings, workspace)  # MCP servers start meanwhile
        self.runtime = build_runtime(
            settings, workspace, backend, mode=settings.approval_mode, extensions=self.extensions
        )
        self.announced: set[str] = set()  # MCP failures and sessions already announced
        self.printer = EventPrinter(console)
        self.session: Session | None = None
        self.pending_note = ""  # told to the model with the next message (after an undo)
        self.last_rate = 0.0
        self.started = time.monotonic()
        self.model_seconds = 0.0  # time spent in turns
        history = self.runtime.project / "history"
        history.parent.mkdir(parents=True, exist_ok=True)
        self.prompt: PromptSession[str] = PromptSession(
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
        if self.runtime.agent is None:
            self.console.print(Text(NO_MODEL_HINT, style="yellow"))
        for note in self.extensions.notes():
            self.console.print(Text(note, style="yellow"))
        interrupted_at_empty = False
        try:
            while True:
                try:
                    text = self.prompt.prompt(PROMPT)
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
        finally:
            self.end_session("prompt_input_exit")
            self.runtime.close()

    def end_session(self, reason: str) -> None:
        """Close the session (SessionEnd hooks run) and forget it."""
        if self.session is None:
            return
        hooks = self.runtime.attach_hooks(self.session)
        if hooks is not None:
            for text in hooks.run("SessionEnd", {"reason": reason}).messages:
                self.console.print(Text(text, style="yellow"))
        self.session.close()
        self.session = None

    def turn(self, text: str) -> None:
        """One user message and everything the agent does about it; Ctrl-C cancels it, a
        failed model request ends it with the error (the session keeps all of it)."""
        agent = self.runtime.agent
        if agent is None:
            self.console.print(Text(NO_MODEL_HINT, style="yellow"))
            return
        if self.session is None:
            self.session = self.runtime.new_session(text)
        message = self._hooked_message(self.pending_note + self._with_mentions(text))
        if message is None:
            return
        self.pending_note = ""
        self.session.begin_turn(message)
        started, generated_before = time.monotonic(), self.session.usage.completion_tokens
        budget = Budget(self.settings.max_steps, self.settings.max_minutes * 60)
        try:
            for item in agent.run(self.session, budget):
                if isinstance(item, ApprovalRequest):
                    self.printer.interrupt()
                    item.answer(self._ask(item))
                else:
                    self.printer.render(item)
        except KeyboardInterrupt:
            self.printer.interrupt()
            self.session.answer_unanswered("cancelled by the user")
            self.console.print(Text("interrupted", style="yellow"))
        except M2AgentError as e:  # the model or its endpoint failed for good
            self.printer.interrupt()
            self.session.answer_unanswered("not run: the model request failed")
            self.console.print(Text(f"error: {e.message}", style="red"))
            self.console.print(Text("(the session is kept: send a message to go on)", style="dim"))
        elapsed = time.monotonic() - started
        self.model_seconds += elapsed
        generated = self.session.usage.completion_tokens - generated_before
        self.last_rate = generated / elapsed if elapsed > 0 else 0.0

    # -- helpers ------------------------------------------------------------------------------

    def _hooked_message(self, message: str) -> str | None:
        """Before a message goes out: MCP tools that became ready join the tool set, newly
        failed servers are reported, and the session's hooks run (SessionStart once per
        session, UserPromptSubmit every time: its context joins the message; a refusal keeps
        the message from the model, None)."""
        assert self.session is not None
        self.runtime.refresh_tools()
        for status in self.extensions.manager.statuses() if self.extensions.manager else []:
            if status.state == "failed" and f"mcp:{status.name}" not in self.announced:
                self.announced.add(f"mcp:{status.name}")
                self.console.print(Text(f"MCP server {status.name} failed: {status.detail}",
                                        style="yellow"))  # fmt: skip
        hooks = self.runtime.attach_hooks(self.session)
        if hooks is None:
            return message
        outcomes = []
        if self.session.id not in self.announced:
            self.announced.add(self.session.id)
            source = "resume" if self.session.turns else "startup"
            outcomes.append(hooks.run("SessionStart", {"source": source}, source))
        submit = hooks.run("UserPromptSubmit", {"prompt": message})
        outcomes.append(submit)
        for outcome in outcomes:
            for text in outcome.messages:
                self.console.print(Text(text, style="yellow"))
        if submit.blocked or submit.stop:
            why = submit.reason or submit.stop_reason
            self.console.print(Text(f"not sent: a UserPromptSubmit hook refused it: {why}",
                                    style="red"))  # fmt: skip
            return None
        context = [c for outcome in outcomes for c in outcome.context]
        return message + "".join(f"\n\n[hook context: {c}]" for c in context)

    def _with_mentions(self, text: str) -> str:
        attached = []
        for name in dict.fromkeys(_MENTION.findall(text)):
            path = (self.workspace / name).resolve()
            if path.is_file() and path.is_relative_to(self.workspace):
                body = path.read_text(encoding="utf-8", errors="replace")[:50_000]
                attached.append(f'<file path="{name}">\n{body}\n</file>')
        return text if not attached else text + "\n\n" + "\n".join(attached)

    def _ask(self, request: ApprovalRequest) -> ApprovalReply:
        """The call and its preview, then one key."""
        line = Text(f"{request.tool} {request.reason}: ", style="bold yellow")
        line.append(request.summary[:200], style="bold")
        self.console.print(line)
        if request.preview:
            if request.preview.startswith(("--- ", "diff ")):
                self.console.print(Syntax(request.preview.rstrip("\n"), "diff", theme="ansi_dark"))
            else:
                self.console.print(Text(request.preview.rstrip("\n"), style="dim"))
        key = ask_key("Allow? [y]es [n]o [a]lways [m]ode auto: ", APPROVAL_KEYS)
        answer = APPROVAL_KEYS[key]
        self.console.print(Text(f"→ {answer}", style="dim"))
        if answer == "mode":
            return ApprovalReply("yes", new_mode="auto")
        return ApprovalReply(answer)  # type: ignore[arg-type]

    def _toolbar(self) -> str:
        context = f"{min(100, 100 * self.printer.context_tokens // 196_608)}%"
        model = self.settings.model or "no model (/model)"
        via = self.backend.name if self.backend is not None else "-"
        return (
            f" {model} via {via} │ context {context} │ {self.last_rate:.0f} tok/s │ "
            f"sandbox {self.settings.sandbox} │ mode {self.runtime.approvals.mode} │ "
            f"{self._branch()}"
        )

    def _branch(self) -> str:
        head = self.workspace / ".git" / "HEAD"
        try:
            ref = head.read_text().strip()
        except OSError:
            return "no git"
        return ref.removeprefix("ref: refs/heads/") if ref.startswith("ref:") else ref[:8]
