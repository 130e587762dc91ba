"""`Session`: the one owner of a conversation. Typed messages are appended in order and each is
written to the session's JSONL file (flushed and fsync'd) the moment it exists, so a crash
(`kill -9` included) loses at most the model response in flight; usage totals; and, for every
user turn, the snapshot of the workspace taken before its first change (its undo point).

Records of the file, one JSON object a line: `session` (header), `turn` (a user turn begins),
`message`, `usage`, `snapshot` (an undo point of the current turn), `undone` (a turn's changes
were reverted), `compacted` (the history was replaced by a shorter one). A torn last line
(the crash) is skipped on load; a call left unanswered by a crash gets an "interrupted" answer,
so every tool call in history is answered exactly once."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from m2agent.agent.messages import (
    AssistantMessage,
    Message,
    ToolMessage,
    Usage,
    UserMessage,
    from_record,
    record,
)

INTERRUPTED = "interrupted: the agent stopped before this call finished; its effect is unknown"


@dataclass(frozen=True, slots=True)
class Turn:
    """One user turn: its number (1-based), its first message's index, the snapshot taken
    before its first change (None: it changed nothing), and whether that was undone."""

    number: int
    title: str
    snapshot: int | None = None
    undone: bool = False


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    path: Path
    title: str
    started: float
    undo_points: int  # turns with a change not yet undone


class Session:
    """Use `Session.create` or `Session.load`; close it when done (also a context manager)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.id = path, str(header["id"])
        self.title, self.started = str(header.get("title", "")), float(header.get("started", 0))
        self.workspace = str(header.get("workspace", ""))
        self._messages: list[Message] = []
        self._turns: list[Turn] = []
        self._usage = Usage()
        self._file: TextIO | None = None

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, workspace: Path, title: str) -> Session:
        folder.mkdir(parents=True, exist_ok=True)
        session_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        header = {"id": session_id, "title": title, "workspace": str(workspace),
                  "started": time.time()}  # fmt: skip
        session = cls(folder / f"{session_id}.jsonl", header)
        session._write("session", header)
        return session

    @classmethod
    def read(cls, path: Path) -> Session:
        """An earlier session as recorded (nothing is written until something is appended).
        ValueError when the file is not a session."""
        records = list(_records(path))
        if not records or records[0].get("kind") != "session":
            raise ValueError(f"{path}: not a session file")
        session = cls(path, records[0])
        for entry in records[1:]:
            session._replay(entry)
        return session

    @classmethod
    def load(cls, path: Path) -> Session:
        """An earlier session, to continue. Calls a crash left unanswered are answered now (and
        that answer is written), so the history can be sent as it is."""
        session = cls.read(path)
        for call_id in session.unanswered():
            session.append(ToolMessage(call_id, INTERRUPTED, is_error=True))
        return session

    def _replay(self, entry: dict[str, Any]) -> None:
        kind = entry.get("kind")
        if kind == "message":
            self._messages.append(from_record(entry["message"]))
        elif kind == "turn":
            self._turns.append(Turn(int(entry["number"]), str(entry.get("title", ""))))
        elif kind == "usage":
            self._usage += Usage(entry["prompt"], entry["completion"], entry["cached"])
        elif kind == "snapshot" and self._turns and self._turns[-1].snapshot is None:
            self._turns[-1] = replace(self._turns[-1], snapshot=int(entry["number"]))
        elif kind == "undone":
            self._turns = [replace(t, undone=True) if t.number == entry["turn"] else t
                           for t in self._turns]  # fmt: skip
        elif kind == "compacted":
            self._messages = [from_record(m) for m in entry["messages"]]

    # -- reading ------------------------------------------------------------------------------

    @property
    def messages(self) -> tuple[Message, ...]:
        return tuple(self._messages)

    @property
    def turns(self) -> tuple[Turn, ...]:
        return tuple(self._turns)

    @property
    def usage(self) -> Usage:
        """Tokens over the whole session (every request, retries' final attempts)."""
        return self._usage

    def unanswered(self) -> list[str]:
        """Ids of tool calls in history without an answer, in order."""
        answered = {m.call_id for m in self._messages if isinstance(m, ToolMessage)}
        return [
            r.id
            for m in self._messages
            if isinstance(m, AssistantMessage)
            for r in m.calls
            if r.id not in answered
        ]

    def last_undo_point(self) -> Turn | None:
        """The latest turn whose changes are still there to undo."""
        return next((t for t in reversed(self._turns) if t.snapshot and not t.undone), None)

    # -- writing ------------------------------------------------------------------------------

    def begin_turn(self, text: str) -> Turn:
        """A user turn starts with this message."""
        turn = Turn(
            len(self._turns) + 1, text.strip().splitlines()[0][:100] if text.strip() else ""
        )
        self._turns.append(turn)
        self._write("turn", {"number": turn.number, "title": turn.title})
        self.append(UserMessage(text))
        return turn

    def append(self, message: Message) -> None:
        self._messages.append(message)
        self._write("message", {"message": record(message)})

    def add_usage(self, usage: Usage) -> None:
        self._usage += usage
        self._write("usage", {"prompt": usage.prompt_tokens,
                              "completion": usage.completion_tokens,
                              "cached": usage.cached_tokens})  # fmt: skip

    def record_snapshot(self, number: int, label: str) -> None:
        """The workspace was snapshotted (as `number`) before a change in the current turn;
        the turn's first such snapshot is its undo point."""
        if not self._turns:
            raise RuntimeError("a snapshot belongs to a user turn; none has begun")
        self._write("snapshot", {"number": number, "label": label, "turn": self._turns[-1].number})
        if self._turns[-1].snapshot is None:
            self._turns[-1] = replace(self._turns[-1], snapshot=number)

    def mark_undone(self, turn: Turn) -> None:
        self._turns = [replace(t, undone=True) if t.number == turn.number else t
                       for t in self._turns]  # fmt: skip
        self._write("undone", {"turn": turn.number})

    def replace_history(self, messages: Iterable[Message]) -> None:
        """Compaction: the conversation continues from this shorter history."""
        self._messages = list(messages)
        self._write("compacted", {"messages": [record(m) for m in self._messages]})

    def answer_unanswered(self, content: str) -> None:
        """After a cancel: every call in history still gets exactly one answer."""
        for call_id in self.unanswered():
            self.append(ToolMessage(call_id, content, is_error=True))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, kind: str, data: dict[str, Any]) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
            if self._file.tell() and not self.path.read_bytes().endswith(b"\n"):
                self._file.write("\n")  # after a torn last line, start a fresh one
        line = json.dumps({"kind": kind, **data}, ensure_ascii=False, default=str)
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def _records(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line after a crash
            if isinstance(entry, dict):
                yield entry


def list_sessions(folder: Path) -> list[SessionInfo]:
    """This workspace's sessions, oldest first."""
    found = []
    for file in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        try:
            session = Session.read(file)
        except ValueError:
            continue
        points = sum(1 for t in session.turns if t.snapshot and not t.undone)
        found.append(SessionInfo(session.id, file, session.title, session.started, points))
    return sorted(found, key=lambda s: s.started)


def find_session(folder: Path, session_id: str | None) -> SessionInfo:
    """The session with this id or id prefix (the latest when None). LookupError if none."""
    sessions = list_sessions(folder)
    if not sessions:
        raise LookupError("no earlier session in this workspace")
    if session_id is None:
        return sessions[-1]
    for session in sessions:
        if session.id == session_id or session.id.startswith(session_id):
            return session
    raise LookupError(f"no session {session_id!r}; `m2agent sessions` lists them")
