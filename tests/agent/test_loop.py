"""The agent loop with a scripted backend (a fake of the ModelBackend protocol) and real tools
on a real workspace: tool results, approvals, undo snapshots, parallel reads, the nudge for a
repeated failing call, and compaction near the context limit."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from m2agent.agent.approvals import ApprovalPolicy, RuleStore
from m2agent.agent.context import compact
from m2agent.agent.events import Notice, SnapshotTaken, TaskDone, ToolFinished
from m2agent.agent.loop import Agent, Budget
from m2agent.backends.base import AssistantTurn, CallRecord, StreamEvent, TurnDone, Usage
from m2agent.engine.protocol import ToolCall
from m2agent.tools import Workspace, default_tools
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.todo import TodoList


class ScriptedBackend:
    name = "scripted"

    def __init__(self, turns: list[AssistantTurn]) -> None:
        self.turns, self.seen = list(turns), []  # type: ignore[var-annotated]

    def stream(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        self.seen.append([dict(m) for m in messages])
        yield TurnDone(self.turns.pop(0))


def calls(*specs: tuple[str, dict[str, Any]], prompt_tokens: int = 10) -> AssistantTurn:
    records = [
        CallRecord(f"c{i}-{name}", ToolCall(name, args)) for i, (name, args) in enumerate(specs)
    ]
    return AssistantTurn("thinking", "", records, "tool_calls", Usage(prompt_tokens, 5, 0))


def answer(text: str) -> AssistantTurn:
    return AssistantTurn("done", text, [], "stop", Usage(10, 5, 0))


def make(tmp_path: Path, turns: list[AssistantTurn], mode: str = "auto") -> tuple[Agent, Path]:
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
    return agent, root


def test_reads_in_parallel_keep_order_and_every_call_is_answered(tmp_path: Path) -> None:
    turns = [
        calls(
            ("Read", {"file_path": "a.txt"}),
            ("Read", {"file_path": "b.txt"}),
            ("Glob", {"pattern": "*.txt"}),
        ),
        answer("ok"),
    ]
    agent, _ = make(tmp_path, turns)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "read"},
    ]
    events = list(agent.run(messages, Budget()))
    finished = [e for e in events if isinstance(e, ToolFinished)]
    assert [e.call_id for e in finished] == ["c0-Read", "c1-Read", "c2-Glob"]
    assert "alpha" in finished[0].content and "beta" in finished[1].content
    assert not [e for e in events if isinstance(e, SnapshotTaken)]  # reads change nothing
    tool_ids = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert tool_ids == ["c0-Read", "c1-Read", "c2-Glob"]
    assert isinstance(events[-1], TaskDone) and events[-1].answer == "ok"


def test_snapshot_once_per_step_and_undo(tmp_path: Path) -> None:
    turns = [
        calls(
            ("Write", {"file_path": "a.txt", "content": "changed\n"}),
            ("Bash", {"command": "rm b.txt"}),
        ),
        answer("done"),
    ]
    agent, root = make(tmp_path, turns)
    events = list(
        agent.run([{"role": "system", "content": "s"}, {"role": "user", "content": "go"}], Budget())
    )
    snapshots = [e for e in events if isinstance(e, SnapshotTaken)]
    assert len(snapshots) == 1
    assert (root / "a.txt").read_text() == "changed\n" and not (root / "b.txt").exists()
    assert agent.checkpoints is not None
    agent.checkpoints.restore(snapshots[0].number)
    assert (root / "a.txt").read_text() == "alpha\n" and (root / "b.txt").read_text() == "beta\n"


def test_read_only_mode_refuses_changes(tmp_path: Path) -> None:
    agent, root = make(
        tmp_path,
        [calls(("Write", {"file_path": "a.txt", "content": "x"})), answer("ok")],
        mode="read-only",
    )
    events = list(
        agent.run([{"role": "system", "content": "s"}, {"role": "user", "content": "go"}], Budget())
    )
    (result,) = [e for e in events if isinstance(e, ToolFinished)]
    assert result.is_error and "not run" in result.content
    assert (root / "a.txt").read_text() == "alpha\n"


def test_repeated_failing_call_gets_a_nudge(tmp_path: Path) -> None:
    bad = ("Edit", {"file_path": "a.txt", "old_string": "missing", "new_string": "x"})
    agent, _ = make(tmp_path, [calls(bad), calls(bad), calls(bad), answer("giving up")])
    events = list(
        agent.run([{"role": "system", "content": "s"}, {"role": "user", "content": "go"}], Budget())
    )
    results = [e.content for e in events if isinstance(e, ToolFinished)]
    assert "Stop repeating" not in results[1] and "has now failed 3 times" in results[2]


def test_max_steps(tmp_path: Path) -> None:
    read = ("Read", {"file_path": "a.txt"})
    agent, _ = make(tmp_path, [calls(read), calls(read), calls(read)])
    events = list(
        agent.run(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "go"}],
            Budget(max_steps=2),
        )
    )
    assert isinstance(events[-1], TaskDone) and events[-1].reason == "max_steps"


def test_compaction_near_the_limit_keeps_task_recent_steps_and_pairs(tmp_path: Path) -> None:
    read = ("Read", {"file_path": "a.txt"})
    turns = [calls(read, prompt_tokens=100) for _ in range(9)] + [answer("ok")]
    agent, _ = make(tmp_path, turns)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "THE TASK"},
    ]
    events = list(agent.run(messages, Budget(context_tokens=110)))
    assert any(isinstance(e, Notice) and "compacted" in e.text for e in events)
    assert messages[1]["content"] == "THE TASK"
    assert messages[2]["content"].startswith("Earlier steps, compacted")
    assert "context:" in messages[-2]["content"] or "context:" in messages[-3]["content"]
    ids = [c["id"] for m in messages if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    answered = [m["tool_call_id"] for m in messages if m["role"] == "tool"]
    assert ids == answered


def test_compact_is_identity_for_short_histories() -> None:
    short = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "t"},
        {"role": "assistant", "content": "a"},
    ]
    assert compact(short) == short


def test_asking_is_announced_as_an_event(tmp_path: Path) -> None:
    from m2agent.agent.approvals import ApprovalReply
    from m2agent.agent.events import ApprovalRequested

    agent, root = make(
        tmp_path, [calls(("Write", {"file_path": "a.txt", "content": "x\n"})), answer("ok")]
    )
    agent.approvals = ApprovalPolicy("ask", RuleStore(None), lambda request: ApprovalReply("yes"))
    events = list(
        agent.run([{"role": "system", "content": "s"}, {"role": "user", "content": "go"}], Budget())
    )
    asked = [e for e in events if isinstance(e, ApprovalRequested)]
    assert [(e.name, e.arguments["file_path"]) for e in asked] == [("Write", "a.txt")]
    assert (root / "a.txt").read_text() == "x\n"
