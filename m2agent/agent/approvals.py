"""Approval policy: whether a tool call runs, is refused, or needs the user's yes.

Modes: `read-only` (only read-only tools), `ask` (default interactive: anything that changes
the workspace asks), `auto-edit` (edits run, commands ask), `auto` (everything runs, inside the
sandbox). "Always" answers become rules (a command's leading words, like `git status` or
`npm test`) kept per project in the user's state directory, never in the repository, so a
repository cannot approve its own commands. A compound command (`a && b | c`) is allowed only
when every part is. The decision is pure; asking goes through a callback.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from m2agent.tools.base import ToolAnnotations
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
class ApprovalRequest:
    tool: str
    arguments: Mapping[str, Any]
    reason: str  # why it needs a yes, in words


@dataclass(frozen=True, slots=True)
class ApprovalReply:
    answer: Literal["yes", "no", "always"]
    new_mode: Mode | None = None  # "switch mode" from the prompt


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
    def __init__(
        self,
        mode: Mode,
        rules: RuleStore,
        ask: Callable[[ApprovalRequest], ApprovalReply] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown approval mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode, self.rules, self._ask = mode, rules, ask

    def decide(
        self, tool: str, annotations: ToolAnnotations, arguments: Mapping[str, Any]
    ) -> Decision:
        """The decision before asking anyone (pure)."""
        if annotations.read_only:
            return "allow"
        if self.mode == "read-only":
            return "deny"
        if self.mode == "auto":
            return "allow"
        command = arguments.get("command") if tool == "Bash" else None
        if isinstance(command, str) and self.rules.allows(command):
            return "allow"
        if self.mode == "auto-edit" and tool != "Bash":
            return "allow"
        return "ask"

    def check(
        self, tool: str, annotations: ToolAnnotations, arguments: Mapping[str, Any]
    ) -> tuple[bool, str]:
        """(allowed, why). Asks through the callback when the decision is "ask"; with no
        callback (headless), asking means no."""
        decision = self.decide(tool, annotations, arguments)
        if decision == "allow":
            return True, "allowed"
        if decision == "deny":
            return False, f"{tool} is not allowed in {self.mode} mode"
        if self._ask is None:
            return False, f"{tool} needs approval and nobody can approve here (mode {self.mode})"
        reply = self._ask(ApprovalRequest(tool, arguments, f"{tool} changes the workspace"))
        if reply.new_mode is not None:
            self.mode = reply.new_mode
        if reply.answer == "always" and tool == "Bash":
            for part in split_command(str(arguments.get("command", ""))) or []:
                self.rules.add(command_pattern(part))
        if reply.answer == "no":
            return False, "the user declined"
        return True, "approved by the user"
