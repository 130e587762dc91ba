"""Approval modes, compound commands, and rules persisted per project."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2agent.agent.approvals import (
    ApprovalPolicy,
    ApprovalReply,
    ApprovalRequest,
    RuleStore,
    command_pattern,
    split_command,
)
from m2agent.tools.base import Description, ToolAnnotations

READ = ToolAnnotations(read_only=True, destructive=False)
WRITE = ToolAnnotations(read_only=False, destructive=True)


def test_split_compound_commands() -> None:
    assert split_command("git status && npm test | tee log; FOO=1 make test") == [
        ["git", "status"], ["npm", "test"], ["tee", "log"], ["make", "test"],
    ]  # fmt: skip
    assert split_command("echo $(curl evil)") is None
    assert split_command("echo `id`") is None
    assert split_command("echo 'unbalanced") is None
    assert split_command("echo 'a && b'") == [["echo", "a && b"]]


@pytest.mark.parametrize(
    ("command", "pattern"),
    [
        ("git status --short", "git status"),
        ("npm run lint -- --fix", "npm run lint"),
        ("python -m pytest -q", "python -m pytest"),
        ("ls -la", "ls"),
        ("git --no-pager log", "git"),
    ],
)
def test_patterns(command: str, pattern: str) -> None:
    parts = split_command(command)
    assert parts is not None
    assert command_pattern(parts[0]) == pattern


def test_every_part_must_be_allowed(tmp_path: Path) -> None:
    store = RuleStore(tmp_path / "approvals.json")
    store.add("git status")
    store.add("npm test")
    assert store.allows("git status && npm test")
    assert store.allows("git status --short | npm test")
    assert not store.allows("git status && rm -rf .")
    assert not store.allows("git push")
    assert not store.allows("git status; $(curl x)")
    assert RuleStore(tmp_path / "approvals.json").rules == ["git status", "npm test"]


@pytest.mark.parametrize(
    ("mode", "tool", "annotations", "expected"),
    [
        ("read-only", "Read", READ, "allow"),
        ("read-only", "Edit", WRITE, "deny"),
        ("read-only", "Bash", WRITE, "deny"),
        ("ask", "Read", READ, "allow"),
        ("ask", "Edit", WRITE, "ask"),
        ("ask", "Bash", WRITE, "ask"),
        ("auto-edit", "Edit", WRITE, "allow"),
        ("auto-edit", "Bash", WRITE, "ask"),
        ("auto", "Bash", WRITE, "allow"),
    ],
)
def test_modes(mode: str, tool: str, annotations: ToolAnnotations, expected: str) -> None:
    policy = ApprovalPolicy(mode, RuleStore(None))  # type: ignore[arg-type]
    described = Description("make", command="make") if tool == "Bash" else Description("a.py")
    assert policy.decide(annotations, described) == expected


def asked(command: str | None, reply: ApprovalReply | None) -> ApprovalRequest:
    request = ApprovalRequest("c1", "Bash" if command else "Edit",
                              Description(command or "a.py", None, command), "why")  # fmt: skip
    if reply is not None:
        request.answer(reply)
    return request


def test_always_persists_rules_and_switch_mode(tmp_path: Path) -> None:
    store = RuleStore(tmp_path / "state" / "approvals.json")
    policy = ApprovalPolicy("ask", store)
    compound = Description("x", command="git status && python -m pytest -q")
    assert policy.decide(WRITE, compound) == "ask"
    request = asked(compound.command, ApprovalReply("always"))
    assert policy.apply(request) == (True, "approved by the user")
    assert policy.decide(WRITE, Description("x", command="python -m pytest tests/x.py")) == "allow"
    assert RuleStore(tmp_path / "state" / "approvals.json").rules == [
        "git status",
        "python -m pytest",
    ]
    assert policy.apply(asked("rm -rf build", ApprovalReply("no"))) == (False, "the user declined")
    assert policy.apply(asked(None, ApprovalReply("yes", new_mode="auto")))[0]
    assert policy.mode == "auto"


def test_an_unanswered_request_is_a_no_and_answers_once() -> None:
    policy = ApprovalPolicy("ask", RuleStore(None))
    allowed, why = policy.apply(asked(None, None))
    assert not allowed and "nobody answered" in why
    request = asked(None, ApprovalReply("yes"))
    with pytest.raises(RuntimeError, match="already answered"):
        request.answer(ApprovalReply("no"))


def test_unknown_mode_and_bad_store(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown approval mode"):
        ApprovalPolicy("yolo", RuleStore(None))  # type: ignore[arg-type]
    bad = tmp_path / "approvals.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="unreadable approvals file"):
        RuleStore(bad)
