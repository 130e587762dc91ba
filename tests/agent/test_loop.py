"""The agent loop with a scripted backend (a fake of the ModelBackend protocol) and real tools
on a real workspace, appending to a real Session: tool results, approval requests with previews,
undo points (none for steps that changed nothing), parallel reads, the nudge for a repeated
failing call, and compaction near the context limit."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from m2agent.agent.approvals import ApprovalPolicy, ApprovalReply, ApprovalRequest, RuleStore
from m2agent.agent.context import compact
from m2agent.agent.events import Notice, SnapshotTaken, TaskDone, ToolFinished
from m2agent.agent.loop import Agent, Budget, Item
from m2agent.agent.messages import (
    AssistantMessage,
    CallRecord,
    Message,
    SystemMessage,
    ToolMessage,
    Usage,
    UserMessage,
)
from m2agent.agent.session import Session
from m2agent.backends.base import StreamEvent, TurnDone
from m2agent.engine.protocol import ToolCall
from m2agent.tools import Workspace, default_tools
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.todo import TodoList

Turn = tuple[AssistantMessage, Usage]


class ScriptedBackend:
    name = "scripted"

    def __init__(self, turns: list[Turn]) -> None:
        self.turns, self.seen = list(turns), []  # type: ignore[var-annotated]

    def stream(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        self.seen.append(list(messages))
        message, usage = self.turns.pop(0)
        yield TurnDone(message, usage)


def calls(*specs: tuple[str, dict[str, Any]], prompt_tokens: int = 10) -> Turn:
    records = tuple(
        CallRecord(f"c{i}-{name}", ToolCall(name, args)) for i, (name, args) in enumerate(specs)
    )
    return AssistantMessage("", "thinking", records), Usage(prompt_tokens, 5, 0)


def answer(text: str) -> Turn:
    return AssistantMessage(text, "done"), Usage(10, 5, 0)


def make(tmp_path: Path, turns: list[Turn], mode: str = "auto") -> tuple[Agent, Session, Path]:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "b.txt").write_text("beta\n")
    agent = Agent(
        ScriptedBackend(turns),
        default_tools(Workspace(root), TodoList(), sandbox="off"),
        ApprovalPolicy(mode, RuleStore(None)),  # type: ignore[arg-type]
        Checkpoints(root, tmp_path / "store"),
    )
    session = Session.create(tmp_path / "sessions", root, "test")
    session.append(SystemMessage("s"))
    session.begin_turn("go")
    return agent, session, root


def run(agent: Agent, session: Session, budget: Budget | None = None) -> list[Item]:
    return list(agent.run(session, budget or Budget()))


def test_reads_in_parallel_keep_order_and_every_call_is_answered(tmp_path: Path) -> None:
    turns = [
        calls(
            ("Read", {"file_path": "a.txt"}),
            ("Read", {"file_path": "b.txt"}),
            ("Glob", {"pattern": "*.txt"}),
        ),
        answer("ok"),
    ]
    agent, session, _ = make(tmp_path, turns)
    events = run(agent, session)
    finished = [e for e in events if isinstance(e, ToolFinished)]
    assert [e.call_id for e in finished] == ["c0-Read", "c1-Read", "c2-Glob"]
    assert "alpha" in finished[0].content and "beta" in finished[1].content
    assert not [e for e in events if isinstance(e, SnapshotTaken)]  # reads change nothing
    tool_ids = [m.call_id for m in session.messages if isinstance(m, ToolMessage)]
    assert tool_ids == ["c0-Read", "c1-Read", "c2-Glob"]
    assert isinstance(events[-1], TaskDone) and events[-1].answer == "ok"
    assert session.usage == Usage(20, 10, 0)


def test_one_undo_point_per_changing_step_and_none_for_a_step_that_changed_nothing(
    tmp_path: Path,
) -> None:
    turns = [
        calls(("Bash", {"command": "cat a.txt"})),  # changes nothing: no undo point
        calls(
            ("Write", {"file_path": "a.txt", "content": "changed\n"}),
            ("Bash", {"command": "rm b.txt"}),
        ),
        answer("done"),
    ]
    agent, session, root = make(tmp_path, turns)
    events = run(agent, session)
    snapshots = [e for e in events if isinstance(e, SnapshotTaken)]
    assert len(snapshots) == 1 and agent.checkpoints is not None
    assert [s.number for s in agent.checkpoints.list()] == [snapshots[0].number]
    assert session.turns[-1].snapshot == snapshots[0].number
    assert (root / "a.txt").read_text() == "changed\n" and not (root / "b.txt").exists()
    agent.checkpoints.restore(snapshots[0].number)
    assert (root / "a.txt").read_text() == "alpha\n" and (root / "b.txt").read_text() == "beta\n"


def test_read_only_mode_refuses_changes(tmp_path: Path) -> None:
    agent, session, root = make(
        tmp_path,
        [calls(("Write", {"file_path": "a.txt", "content": "x"})), answer("ok")],
        mode="read-only",
    )
    (result,) = [e for e in run(agent, session) if isinstance(e, ToolFinished)]
    assert result.is_error and "not run" in result.content
    assert (root / "a.txt").read_text() == "alpha\n"


def test_repeated_failing_call_gets_a_nudge(tmp_path: Path) -> None:
    bad = ("Edit", {"file_path": "a.txt", "old_string": "missing", "new_string": "x"})
    agent, session, _ = make(tmp_path, [calls(bad), calls(bad), calls(bad), answer("giving up")])
    results = [e.content for e in run(agent, session) if isinstance(e, ToolFinished)]
    assert "Stop repeating" not in results[1] and "has now failed 3 times" in results[2]


def test_max_steps(tmp_path: Path) -> None:
    read = ("Read", {"file_path": "a.txt"})
    agent, session, _ = make(tmp_path, [calls(read), calls(read), calls(read)])
    events = run(agent, session, Budget(max_steps=2))
    assert isinstance(events[-1], TaskDone) and events[-1].reason == "max_steps"


def test_compaction_near_the_limit_keeps_task_recent_steps_and_pairs(tmp_path: Path) -> None:
    read = ("Read", {"file_path": "a.txt"})
    turns = [calls(read, prompt_tokens=100) for _ in range(9)] + [answer("ok")]
    agent, session, _ = make(tmp_path, turns)
    events = run(agent, session, Budget(context_tokens=110))
    assert any(isinstance(e, Notice) and "compacted" in e.text for e in events)
    messages = session.messages
    assert messages[1] == UserMessage("go")
    assert isinstance(messages[2], UserMessage)
    assert messages[2].content.startswith("Earlier steps, compacted")
    assert any("context:" in m.content for m in messages[-3:] if isinstance(m, ToolMessage))
    ids = [r.id for m in messages if isinstance(m, AssistantMessage) for r in m.calls]
    answered = [m.call_id for m in messages if isinstance(m, ToolMessage)]
    assert ids == answered
    assert Session.read(session.path).messages == messages  # the file says the same


def test_compact_is_identity_for_short_histories() -> None:
    short: list[Message] = [SystemMessage("s"), UserMessage("t"), AssistantMessage("a")]
    assert compact(short) == short


def test_approval_is_one_request_with_the_tools_preview(tmp_path: Path) -> None:
    edit = {"file_path": "a.txt", "old_string": "alpha", "new_string": "omega"}
    command = {"command": "touch new.txt"}
    agent, session, root = make(
        tmp_path, [calls(("Edit", edit)), calls(("Bash", command)), answer("ok")], mode="ask"
    )
    requests: list[ApprovalRequest] = []
    for item in agent.run(session, Budget()):
        if isinstance(item, ApprovalRequest):
            requests.append(item)
            if item.tool == "Edit":
                assert (root / "a.txt").read_text() == "alpha\n"  # asked before the change
                item.answer(ApprovalReply("yes"))
            # the Bash request is left unanswered: a no
    edit_request, bash_request = requests
    assert edit_request.summary == "a.txt" and edit_request.preview is not None
    assert "-alpha" in edit_request.preview and "+omega" in edit_request.preview
    assert bash_request.summary == "touch new.txt" and bash_request.command == "touch new.txt"
    assert bash_request.preview is not None and str(root) in bash_request.preview
    assert (root / "a.txt").read_text() == "omega\n" and not (root / "new.txt").exists()
    refused = [m for m in session.messages if isinstance(m, ToolMessage)][-1]
    assert refused.is_error and "nobody answered" in refused.content
