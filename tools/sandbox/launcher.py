"""The Landlock backend's launcher: `python -I -S .../launcher.py OPTIONS -- CMD...`, started
with `/` as its working directory, so that nothing in the workspace (an `m2agent/` package,
`sitecustomize.py`, `.pth` files, PYTHON* variables) is ever imported by it.

It applies resource limits, Landlock layer 1 (write in the workspace and the temp folder,
hidden secrets, TCP, signals, abstract sockets), drops every capability, becomes
non-dumpable and loads the seccomp filter, all to itself; then, as a child subreaper, starts
CMD in the requested folder under Landlock layer 2 (`Layout`: no write to the workspace
folder itself, `.git`, `.m2agent`, nor folders holding secrets) and, on Linux >= 5.14, the
broker's seccomp filter, whose notifications it answers while it waits (`broker.py`: the
top-level changes layer 2 refuses). When CMD ends, or on SIGTERM/SIGINT (the timeout), or
when its parent dies, it kills every descendant left (background jobs, setsid'd and
double-forked children, fork bombs) before exiting with CMD's status. Exits 126 with the
reason when the sandbox cannot be applied: the command never runs unconfined.

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


class Layout:
    """What the command may write beneath (Landlock layer 2) and what the broker guards:
    `granted`, O_PATH descriptors of the entries granted whole (every child of the workspace
    but .git, .m2agent and symlinks, whose rule would grant their target; split around hidden
    secrets as layer 1 is); `ruled`, their (st_dev, st_ino); `guarded`, the folders no rule
    covers (the workspace, the ancestors of hidden secrets) with the names in each that the
    broker never touches; `protected`, the folders it never acts in (.git, .m2agent, hidden
    folders)."""

    def __init__(self, workspace: str, hidden: list[str]) -> None:
        self.granted: list[int] = []
        self.ruled: set[tuple[int, int]] = set()
        self.guarded: dict[tuple[int, int], set[str]] = {}
        self.protected: set[tuple[int, int]] = set()
        hidden = [os.path.realpath(p) for p in hidden]
        inside = [p for p in hidden if p.startswith(workspace + "/")]
        children = []
        for entry in os.scandir(workspace):
            if entry.name in PROTECTED:
                self._protect(entry.path)
            elif not entry.is_symlink():
                children.append(entry.path)
        whole, split = landlock.split_around(children, inside)
        for path in whole:
            try:
                fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            info = os.fstat(fd)
            self.granted.append(fd)
            self.ruled.add((info.st_dev, info.st_ino))
        for folder in [workspace, *split]:
            info = os.stat(folder, follow_symlinks=False)
            self.guarded[(info.st_dev, info.st_ino)] = set()
        top = os.stat(workspace)
        self.guarded[(top.st_dev, top.st_ino)].update(name.casefold() for name in PROTECTED)
        for path in [*inside, *split]:  # a secret, or a folder holding one: never moved
            parent = os.stat(os.path.dirname(path), follow_symlinks=False)
            names = self.guarded.get((parent.st_dev, parent.st_ino))
            if names is not None:
                names.add(os.path.basename(path).casefold())
        for path in inside:
            self._protect(path)

    def _protect(self, path: str) -> None:
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            return
        self.protected.add((info.st_dev, info.st_ino))


def confine(found: dict[str, object]) -> None:
    """The launcher's own confinement (Landlock layer 1: write anywhere in the workspace and
    the temp folder), in an order that works for root and for an unprivileged user: limits
    (the process count is measured first), Landlock (needs to read what it grants),
    capabilities, seccomp last."""
    limits: dict[str, int] = found["limits"]  # type: ignore[assignment]
    privileges.apply_limits(*(limits.get(name) for name in LIMITS))
    network = bool(found["network"])
    landlock.restrict(
        [os.path.realpath(str(found["workspace"])), str(found["tmp"])],
        [str(p) for p in found["hide"]],  # type: ignore[attr-defined]
        allow_network=network,
    )
    privileges.drop_capabilities()
    privileges.set_no_new_privs()
    privileges.set_dumpable(False)
    families = seccomp.denied_families(
        allow_network=network, deny_unix=bool(found["deny_unix"]) and not network
    )
    seccomp.install(seccomp.program(families))


def start(command: list[str], cwd: str, granted: list[int], tmp: str, channel: object) -> int:
    """Fork the command: it adds Landlock layer 2 (write beneath `granted` and `tmp` only),
    and, with a `channel` (a socket), the broker's seccomp filter, whose listener it sends
    back before it execs. Exits 126 when it cannot confine itself, 127 when CMD cannot run."""
    child = os.fork()
    if child:
        return child
    code, what = 127, cwd
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores the first two
        os.chdir(cwd)
        code, what = 126, "cannot confine the command"
        landlock.restrict_writes(granted, [tmp])
        for fd in granted:
            os.close(fd)
        if channel is not None:
            _hand_over(channel)
        code, what = 127, command[0]
        os.execvp(command[0], command)
    except OSError as e:
        print(f"m2agent sandbox: {what}: {e.strerror or e}", file=sys.stderr)
    os._exit(code)


def _hand_over(channel: object) -> None:
    """Install the broker's filter and send its listener to the launcher; without one (the
    kernel refused), say so: the command then runs with layer 2 alone, as on older kernels."""
    import _socket

    from m2agent.tools.sandbox import notify

    sock: _socket.socket = channel  # type: ignore[assignment]
    try:
        listener = notify.install_listener(notify.program())
    except OSError as e:
        sock.sendmsg([b"-" + str(e).encode()])
    else:
        rights = (_socket.SOL_SOCKET, _socket.SCM_RIGHTS, listener.to_bytes(4, sys.byteorder))
        sock.sendmsg([b"L"], [rights])
        os.close(listener)
    sock.close()


def _receive_listener(channel: object) -> int | None:
    import _socket

    sock: _socket.socket = channel  # type: ignore[assignment]
    _message, ancillary, _flags, _address = sock.recvmsg(256, _socket.CMSG_SPACE(4))
    sock.close()
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return None


def supervise(found: dict[str, object], command: list[str]) -> int:
    """Start the command as a child and broker its top-level changes (when the kernel can);
    when it ends (or we are told to stop), kill what is left."""
    workspace = os.path.realpath(str(found["workspace"]))
    privileges.become_subreaper()
    layout = Layout(workspace, [str(p) for p in found["hide"]])  # type: ignore[attr-defined]
    wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)

    def stop(signum: int, _frame: object) -> None:
        reaper.kill_all_descendants()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    ours = theirs = None
    if _broker_supported():
        import _socket

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    child = start(command, str(found["cwd"]), layout.granted, str(found["tmp"]), theirs)
    for fd in layout.granted:
        os.close(fd)
    listener = None
    if ours is not None and theirs is not None:
        theirs.close()
        listener = _receive_listener(ours)
    return _wait(child, wake_read, listener, layout)


def _broker_supported() -> bool:
    from m2agent.tools.sandbox import notify

    return notify.supported()


def _wait(
    child: int,
    wake: int,
    listener: int | None,
    layout: Layout,
) -> int:
    import select

    poller = select.poll()
    poller.register(wake, select.POLLIN)
    broker = None
    if listener is not None:
        poller.register(listener, select.POLLIN)
    status = None
    while status is None:
        for fd, events in poller.poll():
            if fd == wake:
                while os.read(wake, 512) == 512:
                    pass
            elif events & select.POLLIN and listener is not None:
                if broker is None:  # loaded on the first notification: most commands send none
                    from m2agent.tools.sandbox.broker import Broker

                    broker = Broker(layout.ruled, layout.guarded, layout.protected, listener)
                try:
                    broker.handle()
                except OSError as e:  # the listener itself failed: the kernel answers ENOSYS
                    print(f"m2agent sandbox: broker: {e}", file=sys.stderr)
                    poller.unregister(fd)
            else:  # every process under the filter is gone
                poller.unregister(fd)
        status = _reap(child)
    reaper.kill_all_descendants()
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _reap(child: int) -> int | None:
    """Collect exited children (orphans land here); the command's wait status once it ended."""
    found = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if pid == 0:
            return found
        if pid == child:
            found = status


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
    return supervise(found, command)


if __name__ == "__main__":
    _code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_code)  # no interpreter teardown: it only costs time here
