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
    def __init__(self, folder: Path, task: str, workspace: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.path = folder / f"{self.id}.jsonl"
        self._file: TextIO = self.path.open("a", encoding="utf-8")
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
