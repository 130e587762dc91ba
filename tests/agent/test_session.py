"""The Session on real files: every message is on disk as soon as it is appended, a torn last
line and a call left unanswered by a crash are repaired on load, turns keep their undo points,
usage totals add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2agent.agent.messages import (
    AssistantMessage,
    CallRecord,
    ProviderExtras,
    SystemMessage,
    ToolMessage,
    Usage,
    UserMessage,
)
from m2agent.agent.session import INTERRUPTED, Session, find_session, list_sessions
from m2agent.engine.protocol import ToolCall

CALL = CallRecord("call_1", ToolCall("Bash", {"command": "pytest -q"}))
ASSISTANT = AssistantMessage(
    "Running the tests.",
    "The test fails;\n  <think>verbatim</think>",
    (CALL,),
    ProviderExtras(({"type": "thinking", "thinking": "x", "signature": "sig"},)),
)


def test_each_message_is_on_disk_when_appended_and_reads_back_typed(tmp_path: Path) -> None:
    session = Session.create(tmp_path, tmp_path, "fix the test")
    session.append(SystemMessage("system"))
    session.begin_turn("fix the test")
    session.append(ASSISTANT)
    # No close, no flush by the caller: another reader sees it all now.
    again = Session.read(session.path)
    assert again.messages == (SystemMessage("system"), UserMessage("fix the test"), ASSISTANT)
    assert again.turns[0].title == "fix the test" and again.turns[0].snapshot is None
    session.add_usage(Usage(100, 20, 50))
    session.add_usage(Usage(150, 10, 100))
    assert Session.read(session.path).usage == Usage(250, 30, 150)
    session.close()


def test_a_crash_leaves_a_torn_line_and_an_unanswered_call_both_repaired(tmp_path: Path) -> None:
    session = Session.create(tmp_path, tmp_path, "t")
    session.begin_turn("t")
    session.append(ASSISTANT)
    session.close()
    with session.path.open("a") as handle:
        handle.write('{"kind": "message", "message": {"role": "tool", "call_')  # torn by kill -9
    resumed = Session.load(session.path)
    assert resumed.messages[-1] == ToolMessage("call_1", INTERRUPTED, is_error=True)
    assert resumed.unanswered() == []
    resumed.begin_turn("go on")
    resumed.close()
    lines = session.path.read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "message"  # written on a fresh line
    assert Session.read(session.path).messages[-1] == UserMessage("go on")


def test_turns_keep_their_first_undo_point_and_undo_marks(tmp_path: Path) -> None:
    session = Session.create(tmp_path, tmp_path, "t")
    with pytest.raises(RuntimeError, match="none has begun"):
        session.record_snapshot(1, "x")
    session.begin_turn("first")
    session.record_snapshot(3, "before step 1")
    session.record_snapshot(4, "before step 2")
    session.begin_turn("second: only reads")
    assert session.last_undo_point() == session.turns[0]
    session.mark_undone(session.turns[0])
    assert session.last_undo_point() is None
    read = Session.read(session.path)
    assert [(t.snapshot, t.undone) for t in read.turns] == [(3, True), (None, False)]
    session.close()
    info = find_session(tmp_path, None)
    assert info.id == session.id and info.undo_points == 0
    assert [s.id for s in list_sessions(tmp_path)] == [session.id]
    with pytest.raises(LookupError, match="no session 'nope'"):
        find_session(tmp_path, "nope")
