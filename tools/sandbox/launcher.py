"""The Landlock backend's launcher: `python -I -S .../launcher.py SPEC_JSON -- CMD...`, started
with `/` as its working directory, so that nothing in the workspace (an `m2agent/` package,
`sitecustomize.py`, `.pth` files, PYTHON* variables) is ever imported by it.

It applies resource limits, Landlock (writes, hidden secrets, TCP, signals, abstract sockets),
drops every capability and loads the seccomp filter, all to itself; then, as a child
subreaper, starts CMD in the requested folder and waits. When CMD ends, or on SIGTERM/SIGINT
(the timeout), or when its parent dies, it kills every descendant left (background jobs,
setsid'd and double-forked children, fork bombs) before exiting with CMD's status. Exits 126
with the reason when the sandbox cannot be applied: the command never runs unconfined.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # Started as a file under `python -I -S`: make only this folder importable, as
    # m2agent.tools.sandbox, without running any package's __init__ or site-packages code.
    import os.path
    import types

    _here = os.path.dirname(os.path.abspath(__file__))
    for _name, _path in (
        ("m2agent", []),
        ("m2agent.tools", []),
        ("m2agent.tools.sandbox", [_here]),
    ):
        _module = types.ModuleType(_name)
        _module.__path__ = _path
        sys.modules[_name] = _module

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from m2agent.tools.sandbox import landlock, privileges, reaper, seccomp

PROTECTED = (".git", ".m2agent")


@dataclass(frozen=True, slots=True)
class LaunchSpec:
    """What the launcher is told, as one JSON argument (no secrets in it: it shows in `ps`)."""

    workspace: str
    tmp: str
    cwd: str
    allow_network: bool = False
    hidden: tuple[str, ...] = ()
    deny_unix: bool = True
    limits: privileges.Limits = privileges.DEFAULT_LIMITS

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "workspace": self.workspace,
            "tmp": self.tmp,
            "cwd": self.cwd,
            "allow_network": self.allow_network,
            "hidden": list(self.hidden),
            "deny_unix": self.deny_unix,
            "limits": {
                "processes": self.limits.processes,
                "memory_bytes": self.limits.memory_bytes,
                "file_bytes": self.limits.file_bytes,
                "open_files": self.limits.open_files,
            },
        }
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> LaunchSpec:
        data = json.loads(text)
        return cls(
            str(data["workspace"]),
            str(data["tmp"]),
            str(data["cwd"]),
            bool(data["allow_network"]),
            tuple(str(p) for p in data["hidden"]),
            bool(data["deny_unix"]),
            privileges.Limits(**data["limits"]),
        )


def script_path() -> str:
    return os.path.abspath(__file__)


def writable_paths(workspace: Path, tmp: Path) -> list[Path]:
    """Every child of the workspace except the protected ones and symlinks (a rule on a link
    would grant its target, possibly outside), and the private temp folder."""
    children = [
        child
        for child in workspace.iterdir()
        if child.name not in PROTECTED and not child.is_symlink()
    ]
    return [*children, tmp]


def confine(spec: LaunchSpec) -> None:
    """Everything, in an order that works for root and for an unprivileged user: limits (the
    process count is measured first), Landlock (needs to read what it grants), capabilities,
    seccomp last."""
    running = privileges.processes_of(os.getuid()) if spec.limits.processes else 0
    privileges.apply_limits(spec.limits, running)
    workspace = Path(spec.workspace)
    landlock.restrict(
        writable_paths(workspace, Path(spec.tmp)),
        [Path(p) for p in spec.hidden],
        allow_network=spec.allow_network,
    )
    privileges.drop_capabilities()
    privileges.set_no_new_privs()
    families = seccomp.denied_families(
        allow_network=spec.allow_network, deny_unix=spec.deny_unix and not spec.allow_network
    )
    seccomp.install(seccomp.program(families))


def supervise(command: list[str], cwd: str) -> NoReturn:
    """Start the command as a child; when it ends (or we are told to stop), kill what is left."""
    privileges.become_subreaper()
    child = os.fork()
    if child == 0:
        try:
            os.chdir(cwd)
            os.execvp(command[0], command)
        except OSError as e:
            print(f"m2agent sandbox: {command[0]}: {e.strerror}", file=sys.stderr)
        os._exit(127)

    def stop(signum: int, _frame: object) -> None:
        reaper.kill_all_descendants()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    reaper.kill_all_descendants()
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: launcher.py SPEC_JSON -- COMMAND...", file=sys.stderr)
        return 2
    spec, command = LaunchSpec.from_json(argv[0]), argv[2:]
    try:
        privileges.die_with_parent(signal.SIGTERM)
        confine(spec)
    except (OSError, ValueError) as e:
        print(f"m2agent sandbox: {e}", file=sys.stderr)
        return 126
    supervise(command, spec.cwd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
