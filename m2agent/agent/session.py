"""Sessions: an append-only JSONL transcript per session (flushed per event, so a crash loses at
most the step in flight), in the project's state folder, with the snapshot taken before the
session's first change (what `m2agent undo` goes back to)."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    path: Path
    task: str
    started: float
    first_snapshot: int | None


class SessionLog:
    def __init__(
        self, folder: Path, task: str, workspace: Path, resume: SessionInfo | None = None
    ) -> None:
        """A new session, or (`resume`) more of an existing one, appended to its file."""
        folder.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self.id, self.path = resume.id, resume.path
            self._file: TextIO = self.path.open("a", encoding="utf-8")
            self.write("resumed", {"task": task, "at": time.time()})
            return
        self.id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.path = folder / f"{self.id}.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self.write(
            "session",
            {"id": self.id, "task": task, "workspace": str(workspace), "started": time.time()},
        )

    def write(self, kind: str, data: dict[str, Any]) -> None:
        self._file.write(json.dumps({"kind": kind, **data}, ensure_ascii=False, default=str) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def list_sessions(folder: Path) -> list[SessionInfo]:
    sessions = []
    for file in sorted(folder.glob("*.jsonl")):
        header: dict[str, Any] = {}
        first_snapshot = None
        with file.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line after a crash
                if record.get("kind") == "session":
                    header = record
                elif record.get("kind") == "snapshot" and first_snapshot is None:
                    first_snapshot = int(record["number"])
        if header:
            sessions.append(
                SessionInfo(
                    header["id"],
                    file,
                    header.get("task", ""),
                    header.get("started", 0.0),
                    first_snapshot,
                )
            )
    return sorted(sessions, key=lambda s: s.started)


def load_messages(path: Path) -> list[dict[str, Any]]:
    """The conversation recorded in a session file, in order (a torn last line is skipped)."""
    messages = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.pop("kind", None) == "message":
                messages.append(record)
    return messages


def find_session(folder: Path, session_id: str | None) -> SessionInfo:
    """The session with this id (or the latest when None)."""
    sessions = list_sessions(folder)
    if not sessions:
        raise LookupError("no earlier session in this workspace")
    if session_id is None:
        return sessions[-1]
    for session in sessions:
        if session.id == session_id or session.id.startswith(session_id):
            return session
    raise LookupError(f"no session {session_id!r}; `m2agent sessions` lists them")
