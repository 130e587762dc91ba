"""Hooks and MCP tools inside the agent loop (scripted backend, real tools, real hook scripts):
PreToolUse decisions meet the approval policy, PostToolUse and Stop feed the model, and an
MCP tool that is not read-only asks like a command."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from m2agent.agent.approvals import ApprovalPolicy, ApprovalReply, ApprovalRequest, RuleStore
from m2agent.agent.events import Notice, TaskDone, ToolFinished
from m2agent.agent.loop import Agent, Budget, Item
from m2agent.agent.messages import (
    AssistantMessage,
    CallRecord,
    Message,
    SystemMessage,
    Usage,
    UserMessage,
)
from m2agent.agent.session import Session
from m2agent.backends.base import StreamEvent, TurnDone
from m2agent.engine.protocol import ToolCall
from m2agent.hooks import HookRunner, parse_hooks
from m2agent.mcp.tool import McpTool, RemoteTool
from m2agent.tools import Workspace, default_tools
from m2agent.tools.base import ToolResult
from m2agent.tools.todo import TodoList

Turn = tuple[AssistantMessage, Usage]


class ScriptedBackend:
    name = "scripted"

    def __init__(self, turns: list[Turn]) -> None:
        self.turns: list[Turn] = list(turns)
        self.seen: list[list[Message]] = []

    def stream(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        self.seen.append(list(messages))
        message, usage = self.turns.pop(0)
        yield TurnDone(message, usage)


def calls(*specs: tuple[str, dict[str, Any]]) -> Turn:
    records = tuple(
        CallRecord(f"c{i}-{name}", ToolCall(name, args)) for i, (name, args) in enumerate(specs)
    )
    return AssistantMessage("", "thinking", records), Usage(10, 5, 0)


def answer(text: str) -> Turn:
    return AssistantMessage(text, "done"), Usage(10, 5, 0)


def hook(event: str, command: str, matcher: str = "") -> dict[str, Any]:
    return {event: [{"matcher": matcher, "hooks": [{"type": "command", "command": command}]}]}


def make(
    tmp_path: Path, turns: list[Turn], mode: str, hooks: dict[str, Any], extra: Sequence[Any] = ()
) -> tuple[Agent, Session, Path]:
    root = tmp_path / "ws"
    root.mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "b.txt").write_text("beta\n")
    tools = default_tools(Workspace(root), TodoList(), sandbox="off").with_tools(extra)
    session = Session.create(tmp_path / "sessions", root, "test")
    runner = HookRunner(parse_hooks(hooks, "test"), session_id=session.id,
                        transcript_path=session.path, cwd=root)  # fmt: skip
    agent = Agent(ScriptedBackend(turns), tools, ApprovalPolicy(mode, RuleStore(None)),  # type: ignore[arg-type]
                  None, runner)  # fmt: skip
    session.append(SystemMessage("s"))
    session.begin_turn("go")
    return agent, session, root


def drive(agent: Agent, session: Session, reply: str = "yes") -> list[Item]:
    items = []
    for item in agent.run(session, Budget()):
        if isinstance(item, ApprovalRequest):
            item.answer(ApprovalReply(reply))  # type: ignore[arg-type]
        items.append(item)
    return items


def results(items: list[Item]) -> list[str]:
    return [i.content for i in items if isinstance(i, ToolFinished)]


WRITE = ("Write", {"file_path": "new.txt", "content": "x"})


def decide(decision: str) -> str:
    body = json.dumps({"hookSpecificOutput": {"permissionDecision": decision}})
    return f"echo '{body}'"


def test_a_hooks_ask_is_asked_even_in_auto_mode(tmp_path: Path) -> None:
    agent, session, root = make(tmp_path, [calls(WRITE), answer("ok")], "auto",
                                hook("PreToolUse", decide("ask"), "Write"))  # fmt: skip
    items = drive(agent, session, reply="no")
    assert any(isinstance(i, ApprovalRequest) for i in items)
    assert not (root / "new.txt").exists() and results(items)[0].startswith("not run")


def test_a_hooks_allow_answers_the_question_but_not_a_modes_deny(tmp_path: Path) -> None:
    agent, session, root = make(tmp_path, [calls(WRITE), answer("ok")], "ask",
                                hook("PreToolUse", decide("allow")))  # fmt: skip
    items = drive(agent, session, reply="no")
    assert not any(isinstance(i, ApprovalRequest) for i in items)
    assert (root / "new.txt").read_text() == "x"
    agent, session, root = make(tmp_path / "ro", [calls(WRITE), answer("ok")], "read-only",
                                hook("PreToolUse", decide("allow")))  # fmt: skip
    items = drive(agent, session)
    assert "not allowed in read-only mode" in results(items)[0]
    assert not (root / "new.txt").exists()


def test_a_block_in_a_batch_of_reads_stops_only_that_call(tmp_path: Path) -> None:
    script = "grep -q b.txt && { echo 'not b' >&2; exit 2; }; exit 0"
    reads = calls(("Read", {"file_path": "a.txt"}), ("Read", {"file_path": "b.txt"}))
    agent, session, _ = make(tmp_path, [reads, answer("ok")], "ask",
                             hook("PreToolUse", script, "Read"))  # fmt: skip
    first, second = results(drive(agent, session))
    assert "alpha" in first
    assert second.startswith("not run: blocked by a PreToolUse hook: not b\n")


def test_post_tool_use_context_and_stop_hook_continuation(tmp_path: Path) -> None:
    flag = tmp_path / "stopped-once"
    stop = f"[ -e {flag} ] && exit 0; touch {flag}; echo 'run the tests first' >&2; exit 2"
    context = """echo '{"hookSpecificOutput": {"additionalContext": "formatted"}}'"""
    hooks = {**hook("PostToolUse", context, "Read"), **hook("Stop", stop)}
    script = [calls(("Read", {"file_path": "a.txt"})), answer("done?"), answer("done.")]
    agent, session, _ = make(tmp_path, script, "ask", hooks)
    items = drive(agent, session)
    assert "\n[hook context: formatted]" in results(items)[0]
    done = [i for i in items if isinstance(i, TaskDone)]
    assert done[-1].answer == "done." and done[-1].steps == 3
    users = [m.content for m in session.messages if isinstance(m, UserMessage)]
    assert users[-1] == "Stop hook: run the tests first"


def test_an_mcp_tool_that_writes_asks_in_auto_edit_and_always_allows_it(tmp_path: Path) -> None:
    ran: list[dict[str, Any]] = []

    def call(server: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
        ran.append(arguments)
        return ToolResult(f"{tool} ok")

    remote = RemoteTool("gh", "create_issue", "Open an issue.", {"type": "object"}, False, True)
    reader = RemoteTool("gh", "list_issues", "List issues.", {"type": "object"}, True, False)
    tools = [McpTool(remote, call), McpTool(reader, call)]
    script = [calls(("mcp__gh__create_issue", {"title": "a"})),
              calls(("mcp__gh__create_issue", {"title": "b"})),
              calls(("mcp__gh__list_issues", {})), answer("ok")]  # fmt: skip
    agent, session, _ = make(tmp_path, script, "auto-edit", {}, tools)
    items = drive(agent, session, reply="always")
    asked = [i for i in items if isinstance(i, ApprovalRequest)]
    assert len(asked) == 1 and "create_issue on gh" in asked[0].summary
    assert [r.splitlines()[0] for r in results(items)] == ["create_issue ok"] * 2 + [
        "list_issues ok"
    ]
    assert ran == [{"title": "a"}, {"title": "b"}, {}]


def test_updated_input_replaces_the_arguments(tmp_path: Path) -> None:
    updated = {"file_path": "new.txt", "content": "safe"}
    body = {"hookSpecificOutput": {"permissionDecision": "allow", "updatedInput": updated}}
    rewrite = hook("PreToolUse", f"echo '{json.dumps(body)}'", "Write")
    agent, session, root = make(tmp_path, [calls(WRITE), answer("ok")], "ask", rewrite)
    items = drive(agent, session, reply="no")
    assert (root / "new.txt").read_text() == "safe"
    assert any(isinstance(i, Notice) and "changed the input of Write" in i.text for i in items)
