"""Finding and killing every descendant of this process (the launcher is their subreaper, so
double-forked and setsid'd children are still its descendants). Stdlib only."""

from __future__ import annotations

import os
import signal
import time


def descendants(root: int) -> list[int]:
    """Every living descendant of `root`, from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def reap() -> None:
    """Collect every exited child (zombies) without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def has_children() -> bool:
    """Whether this (single-threaded) process has any child: cheaper than a scan of /proc, and
    enough for a subreaper, whose every descendant has an ancestor among its children."""
    pid = os.getpid()
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as children:
            return bool(children.read().strip())
    except OSError:
        return True  # no such file (CONFIG_PROC_CHILDREN off): scan


def kill_all_descendants(deadline_s: float = 5.0) -> bool:
    """SIGKILL every descendant, again and again until none is left (a fork bomb forks while
    it is being killed; its orphans land here). True when none is left."""
    me = os.getpid()
    end = time.monotonic() + deadline_s
    if not has_children():
        reap()
        return True
    while True:
        pids = descendants(me)
        if not pids:
            reap()
            return not descendants(me)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
        reap()
        if time.monotonic() > end:
            return False
