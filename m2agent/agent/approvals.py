"""Approval policy: whether a tool call runs, is refused, or needs the user's yes.

Modes: `read-only` (only read-only tools), `ask` (default interactive: anything that changes
the workspace asks), `auto-edit` (edits run, commands ask), `auto` (everything runs, inside the
sandbox). "Always" answers become rules (a command's leading words, like `git status` or
`npm test`) kept per project in the user's state directory, never in the repository, so a
repository cannot approve its own commands. A compound command (`a && b | c`) is allowed only
when every part is. The decision is pure and made once, in the loop: when it is "ask", the
loop yields an `ApprovalRequest` (with the tool's own preview of the call) and a front end
answers it; a request nobody answers is a no. Nothing here knows a tool's argument names: the
tool says which shell command, if any, a call runs.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from m2agent.tools.base import Description, ToolAnnotations
from m2agent.tools.files import atomic_write

Mode = Literal["read-only", "ask", "auto-edit", "auto"]
MODES: tuple[Mode, ...] = ("read-only", "ask", "auto-edit", "auto")
Decision = Literal["allow", "ask", "deny"]

# Programs whose first argument names the action: `git status` is a different command from
# `git push`, so rules for them keep two words.
SUBCOMMAND_PROGRAMS = frozenset(
    {
        "git",
        "npm",
        "pnpm",
        "yarn",
        "cargo",
        "go",
        "make",
        "pip",
        "uv",
        "docker",
        "kubectl",
        "poetry",
    }
)
_SEPARATORS = frozenset({"&&", "||", ";", "|", "&", "|&"})
_UNJUDGEABLE = ("$(", "`", "<(", ">(")


@dataclass(frozen=True, slots=True)
class ApprovalReply:
    answer: Literal["yes", "no", "always"]
    new_mode: Mode | None = None  # "switch mode" from the prompt
    why: str = ""  # for a no: said to the model ("the user declined", "nobody can approve")


class ApprovalRequest:
    """A call that needs a yes, with what it would do. The front end that receives it calls
    `answer()` before asking the loop for its next item; unanswered, it is a no."""

    def __init__(self, call_id: str, tool: str, description: Description, reason: str) -> None:
        self.call_id, self.tool, self.reason = call_id, tool, reason
        self.summary, self.preview = description.summary, description.preview
        self.command = description.command
        self._reply: ApprovalReply | None = None

    def answer(self, reply: ApprovalReply) -> None:
        if self._reply is not None:
            raise RuntimeError(f"approval for {self.call_id} was already answered")
        self._reply = reply

    @property
    def reply(self) -> ApprovalReply:
        return self._reply or ApprovalReply("no", why="nobody answered the approval request")

    def as_json(self) -> dict[str, object]:
        return {
            "type": "ApprovalRequest",
            "call_id": self.call_id,
            "tool": self.tool,
            "summary": self.summary,
            "preview": self.preview,
            "reason": self.reason,
        }


def split_command(command: str) -> list[list[str]] | None:
    """The simple commands of a compound command, as token lists; None when it holds
    constructs a prefix rule cannot judge (command substitution, process substitution)."""
    if any(marker in command for marker in _UNJUDGEABLE):
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes
        return None
    parts: list[list[str]] = [[]]
    for token in tokens:
        if token in _SEPARATORS:
            parts.append([])
        else:
            parts[-1].append(token)
    parts = [p for p in parts if p]
    # Leading VAR=value assignments do not change which program runs.
    return [
        [t for i, t in enumerate(p) if not ("=" in t and all("=" in x for x in p[: i + 1]))] or p
        for p in parts
    ]


def command_pattern(tokens: list[str]) -> str:
    """The rule an "always" answer creates for one simple command."""
    if not tokens:
        return ""
    program = os.path.basename(tokens[0])
    if program.startswith("python") and len(tokens) > 2 and tokens[1] == "-m":
        return " ".join(tokens[:3])
    if program in SUBCOMMAND_PROGRAMS and len(tokens) > 1 and not tokens[1].startswith("-"):
        if program in ("npm", "pnpm", "yarn") and tokens[1] == "run" and len(tokens) > 2:
            return " ".join(tokens[:3])
        return " ".join(tokens[:2])
    return tokens[0]


def rule_matches(rule: str, tokens: list[str]) -> bool:
    words = rule.split()
    return bool(words) and tokens[: len(words)] == words


class RuleStore:
    """Allowed command patterns of one project, in a JSON file written atomically."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rules: list[str] = []
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.rules = [r for r in data.get("allow_commands", []) if isinstance(r, str)]
            except (OSError, json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{path}: unreadable approvals file ({e})") from e

    def add(self, rule: str) -> None:
        if rule and rule not in self.rules:
            self.rules.append(rule)
            self._save()

    def allows(self, command: str) -> bool:
        parts = split_command(command)
        return bool(parts) and all(any(rule_matches(r, p) for r in self.rules) for p in parts or [])

    def _save(self) -> None:
        if self.path is not None:
            atomic_write(self.path, json.dumps({"allow_commands": self.rules}, indent=2))


class ApprovalPolicy:
    def __init__(self, mode: Mode, rules: RuleStore) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown approval mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode, self.rules = mode, rules

    def decide(self, annotations: ToolAnnotations, description: Description) -> Decision:
        """The decision before asking anyone (pure)."""
        if annotations.read_only:
            return "allow"
        if self.mode == "read-only":
            return "deny"
        if self.mode == "auto":
            return "allow"
        if description.command is not None and self.rules.allows(description.command):
            return "allow"
        if self.mode == "auto-edit" and description.command is None:
            return "allow"
        return "ask"

    def why_denied(self, tool: str) -> str:
        return f"{tool} is not allowed in {self.mode} mode"

    def reason(self, tool: str, description: Description) -> str:
        """Why a call needs a yes, in words."""
        return "runs a command" if description.command is not None else f"{tool} changes files"

    def apply(self, request: ApprovalRequest) -> tuple[bool, str]:
        """(allowed, why) from the front end's reply; an "always" becomes rules for the
        command's parts, a mode switch changes the mode."""
        reply = request.reply
        if reply.new_mode is not None:
            self.mode = reply.new_mode
        if reply.answer == "always" and request.command is not None:
            for part in split_command(request.command) or []:
                self.rules.add(command_pattern(part))
        if reply.answer == "no":
            return False, reply.why or "the user declined"
        return True, "approved by the user"
