"""Agent events -> terminal output (rich): reasoning dimmed and folded to its last lines, the
answer streamed as live Markdown, one compact line per tool call with its result, edits as
coloured diffs, command output tails. A retried request takes back what its failed attempt
streamed, so no text shows twice. Counts nothing (the session owns usage). The only
agent-side module that imports rich."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.syntax import Syntax
from rich.text import Text

from m2agent.agent.events import (
    AnswerText,
    Event,
    Notice,
    ReasoningText,
    Retry,
    StepUsage,
    TaskDone,
    ToolFinished,
    ToolStarted,
)

FOLDED_LINES = 3


@dataclass
class EventPrinter:
    console: Console
    reasoning: list[str] = field(default_factory=list)  # this turn's, for /think
    last_reasoning: str = ""
    context_tokens: int = 0  # the last request's prompt + answer: how full the window is
    _answer: list[str] = field(default_factory=list)
    _live: Live | None = None
    _shown: str = ""  # reasoning printed by the current attempt of this step
    _void: str = ""  # reasoning a failed attempt printed: not printed again

    def render(self, event: Event) -> None:
        if isinstance(event, ReasoningText):
            self.reasoning.append(event.text)
        elif isinstance(event, AnswerText):
            self._flush_reasoning()
            self._answer.append(event.text)
            markdown = Markdown("".join(self._answer))
            if self._live is None:
                self._live = Live(markdown, console=self.console, refresh_per_second=8)
                self._live.start()
            else:
                self._live.update(markdown)
        elif isinstance(event, ToolStarted):
            self._end_answer()
            self._flush_reasoning()
            line = Text("● ", style="cyan")
            line.append(event.name, style="bold")
            line.append(f" {event.summary[:100]}")
            self.console.print(line)
        elif isinstance(event, ToolFinished):
            self._tool_result(event)
        elif isinstance(event, Retry):
            self.take_back()
            note = f"! model request failed ({event.reason}); retrying in {event.delay_s:.1f}s"
            self.console.print(Text(note, style="yellow"))
        elif isinstance(event, Notice):
            self._end_answer()
            self.console.print(Text(f"! {event.text}", style="yellow"))
        elif isinstance(event, StepUsage):
            self._shown = self._void = ""  # the step's response is complete
            self.context_tokens = event.prompt_tokens + event.completion_tokens
        elif isinstance(event, TaskDone):
            self._flush_reasoning()
            self._end_answer()
            if event.reason != "answered":
                self.console.print(
                    Text(f"stopped: {event.reason.replace('_', ' ')}", style="yellow")
                )

    def interrupt(self) -> None:
        """The turn was cancelled: close whatever was being drawn."""
        self._end_answer()
        self.reasoning.clear()

    def take_back(self) -> None:
        """The attempt that streamed the current text failed: erase it (a live answer is
        redrawn empty), forget the reasoning not yet shown, and remember the reasoning already
        printed, which the next attempt repeats and will not print again."""
        self._void, self._shown = self._shown, ""
        if self._live is not None:
            self._live.update(Text(""))
            self._live.stop()
            self._live = None
        self._answer.clear()
        self.reasoning.clear()

    def _flush_reasoning(self) -> None:
        if not self.reasoning:
            return
        text = "".join(self.reasoning).strip("\n")
        self.reasoning.clear()
        self.last_reasoning = text
        self._shown += text
        if self._void and text.startswith(self._void):
            text = text[len(self._void) :].strip("\n")  # a retry repeating what was shown
        self._void = ""
        lines = text.splitlines()
        shown = lines[-FOLDED_LINES:]
        hidden = len(lines) - len(shown)
        for line in shown:
            self.console.print(Text(f"  {line}", style="dim italic"))
        if hidden:
            self.console.print(Text(f"  ({hidden} more lines of reasoning: /think)", style="dim"))

    def _end_answer(self) -> None:
        """The answer so far, rendered as Markdown, is final."""
        if self._live is not None:
            self._live.update(Markdown("".join(self._answer)))
            self._live.stop()
            self._live = None
        self._answer.clear()

    def _tool_result(self, event: ToolFinished) -> None:
        diff = event.metadata.get("diff")
        if diff and not event.is_error:
            self.console.print(Syntax(diff.rstrip("\n"), "diff", theme="ansi_dark"))
            return
        lines = event.content.rstrip("\n").splitlines()
        style = "red" if event.is_error else "green"
        if "exit_code" in event.metadata:  # a command: its output's tail and its exit
            for line in lines[-5:]:
                self.console.print(Text(f"  │ {line}", style="dim"))
            code = event.metadata["exit_code"]
            self.console.print(
                Text(f"  └ exit {code}" if code is not None else "  └ timed out", style=style)
            )
        else:
            first = lines[0] if lines else ""
            more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
            self.console.print(Text(f"  └ {first[:120]}{more}", style=style))
