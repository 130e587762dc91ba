"""The Landlock backend's launcher: `python -I -S .../launcher.py OPTIONS -- CMD...`, started
with `/` as its working directory, so that nothing in the workspace (an `m2agent/` package,
`sitecustomize.py`, `.pth` files, PYTHON* variables) is ever imported by it.

It applies resource limits, Landlock (writes, hidden secrets, TCP, signals, abstract sockets),
drops every capability and loads the seccomp filter, all to itself; then, as a child
subreaper, starts CMD in the requested folder and waits. When CMD ends, or on SIGTERM/SIGINT
(the timeout), or when its parent dies, it kills every descendant left (background jobs,
setsid'd and double-forked children, fork bombs) before exiting with CMD's status. Exits 126
with the reason when the sandbox cannot be applied: the command never runs unconfined.

It runs before every command, so it imports as little as it can (no pathlib, json, argparse,
dataclasses or typing: each costs milliseconds). Its options (no secrets: they show in `ps`):
`--workspace W --tmp T --cwd C [--network] [--deny-unix] [--hide PATH]...
[--limit processes|memory_bytes|file_bytes|open_files=N]...`.
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

import os
import signal
from collections.abc import Iterable, Mapping

from m2agent.tools.sandbox import landlock, privileges, reaper, seccomp

PROTECTED = (".git", ".m2agent")
LIMITS = ("processes", "memory_bytes", "file_bytes", "open_files")


def script_path() -> str:
    return os.path.abspath(__file__)


def options(
    workspace: str,
    tmp: str,
    cwd: str,
    *,
    allow_network: bool,
    hidden: Iterable[str],
    deny_unix: bool,
    limits: Mapping[str, int | None],
) -> list[str]:
    """The launcher's options, for the agent side to put before `-- CMD...`."""
    argv = ["--workspace", workspace, "--tmp", tmp, "--cwd", cwd]
    argv += ["--network"] if allow_network else []
    argv += ["--deny-unix"] if deny_unix else []
    for path in hidden:
        argv += ["--hide", path]
    for name, value in limits.items():
        if value is not None:
            argv += ["--limit", f"{name}={value}"]
    return argv


def parse(argv: list[str]) -> tuple[dict[str, object], list[str]]:
    """(options, command); ValueError with the reason on anything unexpected."""
    if "--" not in argv:
        raise ValueError("no `--` before the command")
    split = argv.index("--")
    words, command = argv[:split], argv[split + 1 :]
    if not command:
        raise ValueError("no command given")
    found: dict[str, object] = {"network": False, "deny_unix": False, "hide": [], "limits": {}}
    i = 0
    while i < len(words):
        word = words[i]
        if word in ("--network", "--deny-unix"):
            found[word[2:].replace("-", "_")] = True
            i += 1
            continue
        if i + 1 >= len(words):
            raise ValueError(f"{word} needs a value")
        value = words[i + 1]
        if word in ("--workspace", "--tmp", "--cwd"):
            found[word[2:]] = value
        elif word == "--hide":
            found["hide"].append(value)  # type: ignore[attr-defined]
        elif word == "--limit":
            name, _, number = value.partition("=")
            if name not in LIMITS:
                raise ValueError(f"unknown limit {name!r}")
            found["limits"][name] = int(number)  # type: ignore[index]
        else:
            raise ValueError(f"unknown option {word!r}")
        i += 2
    for needed in ("workspace", "tmp", "cwd"):
        if needed not in found:
            raise ValueError(f"--{needed} is required")
    return found, command


def writable_paths(workspace: str, tmp: str) -> list[str]:
    """Every child of the workspace except the protected ones and symlinks (a rule on a link
    would grant its target, possibly outside), and the private temp folder."""
    children = [
        entry.path
        for entry in os.scandir(workspace)
        if entry.name not in PROTECTED and not entry.is_symlink()
    ]
    return [*children, tmp]


def confine(found: dict[str, object]) -> None:
    """Everything, in an order that works for root and for an unprivileged user: limits (the
    process count is measured first), Landlock (needs to read what it grants), capabilities,
    seccomp last."""
    limits: dict[str, int] = found["limits"]  # type: ignore[assignment]
    privileges.apply_limits(*(limits.get(name) for name in LIMITS))
    network = bool(found["network"])
    landlock.restrict(
        writable_paths(os.path.realpath(str(found["workspace"])), str(found["tmp"])),
        [str(p) for p in found["hide"]],  # type: ignore[attr-defined]
        allow_network=network,
    )
    privileges.drop_capabilities()
    privileges.set_no_new_privs()
    families = seccomp.denied_families(
        allow_network=network, deny_unix=bool(found["deny_unix"]) and not network
    )
    seccomp.install(seccomp.program(families))


def supervise(command: list[str], cwd: str) -> int:
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
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    try:
        found, command = parse(argv)
    except ValueError as e:
        print(f"m2agent sandbox: {e}", file=sys.stderr)
        return 2
    try:
        privileges.die_with_parent(signal.SIGTERM)
        confine(found)
    except (OSError, ValueError) as e:
        print(f"m2agent sandbox: {e}", file=sys.stderr)
        return 126
    return supervise(command, str(found["cwd"]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
