"""REPL pieces in-process: key bindings with piped input, completion, and rendering snapshots
at a fixed width."""

from __future__ import annotations

import subprocess
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from m2agent.agent.events import (
    AnswerText,
    ReasoningText,
    Retry,
    TaskDone,
    ToolFinished,
    ToolStarted,
)
from m2agent.ui.render import EventPrinter
from m2agent.ui.repl import APPROVAL_KEYS, ReplCompleter, ask_key, key_bindings


def test_enter_sends_and_alt_enter_inserts_a_newline() -> None:
    with create_pipe_input() as pipe:
        session: PromptSession[str] = PromptSession(
            input=pipe, output=DummyOutput(), key_bindings=key_bindings()
        )
        pipe.send_text("first line\x1b\rsecond line\r")
        assert session.prompt("> ") == "first line\nsecond line"


def test_bracketed_paste_arrives_as_one_message() -> None:
    with create_pipe_input() as pipe:
        session: PromptSession[str] = PromptSession(
            input=pipe, output=DummyOutput(), key_bindings=key_bindings()
        )
        pipe.send_text("\x1b[200~pasted\nacross lines\x1b[201~\r")
        assert session.prompt("> ") == "pasted\nacross lines"


def test_completion_of_slash_commands_and_mentions(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "calc.py").write_text("")
    (tmp_path / "README.md").write_text("")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    completer = ReplCompleter(tmp_path)
    slash = [c.text for c in completer.get_completions(Document("/un"), None)]
    assert slash == ["/undo"]
    mention = [c.text for c in completer.get_completions(Document("look at @src/c"), None)]
    assert mention == ["@src/calc.py"]


def render(events: list) -> str:
    console = Console(record=True, width=60, color_system=None, force_terminal=False)
    printer = EventPrinter(console)
    for event in events:
        printer.render(event)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


def test_reasoning_is_folded_to_its_last_lines() -> None:
    text = render(
        [
            ReasoningText("one\ntwo\nthree\nfour\nfive"),
            AnswerText("The answer."),
            TaskDone("answered", 1, ""),
        ]
    )
    assert text == "  three\n  four\n  five\n  (2 more lines of reasoning: /think)\nThe answer.\n"


def test_tool_lines_and_diffs() -> None:
    diff = (
        "--- a/calc.py\n+++ b/calc.py\n@@ -1,2 +1,2 @@\n"
        " def add(a, b):\n-    return a - b\n+    return a + b\n"
    )
    text = render(
        [
            ToolStarted("c1", "Edit", {"file_path": "calc.py"}, "calc.py"),
            ToolFinished("c1", "Edit", "calc.py: edited", False, {"diff": diff}),
            ToolStarted("c2", "Bash", {"command": "pytest -q"}, "pytest -q"),
            ToolFinished("c2", "Bash", "1 passed\n", False, {"exit_code": 0}),
            ToolStarted("c3", "Read", {"file_path": "nope.py"}, "nope.py"),
            ToolFinished("c3", "Read", "nope.py does not exist", True),
        ]
    )
    assert text.splitlines() == [
        "● Edit calc.py",
        "--- a/calc.py",
        "+++ b/calc.py",
        "@@ -1,2 +1,2 @@",
        " def add(a, b):",
        "-    return a - b",
        "+    return a + b",
        "● Bash pytest -q",
        "  │ 1 passed",
        "  └ exit 0",
        "● Read nope.py",
        "  └ nope.py does not exist",
    ]


def test_answers_render_as_markdown() -> None:
    text = render(
        [AnswerText("Use **bold** and `code`:\n\n- one\n- two"), TaskDone("answered", 1, "")]
    )
    assert "**" not in text and "`" not in text
    assert "Use bold and code:" in text and "• one" in text


def test_a_retried_attempt_is_taken_back_so_no_text_shows_twice() -> None:
    text = render(
        [
            ReasoningText("thinking about it"),
            AnswerText("The answer is"),
            Retry(1, "http://x/v1/chat/completions: the stream ended before [DONE]", 0.5),
            ReasoningText("thinking about it"),
            AnswerText("The answer is 42."),
            TaskDone("answered", 1, "The answer is 42."),
        ]
    )
    assert text.count("The answer is") == 1 and text.count("thinking about it") == 1
    assert "retrying in 0.5s" in text


def test_one_key_answers_an_approval() -> None:
    for key, expected in (("y", "y"), ("m", "m"), ("\x03", "n")):
        with create_pipe_input() as pipe:
            pipe.send_text(key)
            assert ask_key("Allow? ", APPROVAL_KEYS, input=pipe, output=DummyOutput()) == expected
