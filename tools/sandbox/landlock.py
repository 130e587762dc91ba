"""Landlock, for the fallback backend on machines where namespaces are blocked (Docker's default
profile, GitHub runners): applied by the launcher (`launcher.py`) in two layers, together with
the seccomp filter and dropped privileges.

Landlock rules only add rights, for whole hierarchies, so no rule can give the workspace folder
itself without giving `.git` and `.m2agent` too. Layer 1 (`restrict`, the launcher and so
everything it starts): read anywhere but hidden secrets, write beneath the workspace and a
private temp folder. Layer 2 (`restrict_writes`, the command only): write beneath each *other*
existing child of the workspace and the temp folder, never the workspace folder itself. What
layer 2 refuses at the top level (creating, removing, renaming top-level entries) the broker
(`broker.py`), which has only layer 1, does for the command when it is safe. Secrets are hidden
by granting read access to everything around them (`split_around`). Network: Landlock (ABI >= 4)
denies TCP bind/connect; ABI >= 6 also scopes abstract unix sockets and signals to the sandbox
(so a command cannot signal the launcher either: it is outside the command's layer).
Linux only; plain ctypes, stdlib only (the launcher loads it without site-packages).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
from collections.abc import Iterable

_SYSCALLS = {  # landlock_create_ruleset, landlock_add_rule, landlock_restrict_self (same on arm64)
    "create": 444,
    "add": 445,
    "restrict": 446,
}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem access rights by the ABI that introduced them.
_FS_RIGHTS = [
    (1, "EXECUTE", 1 << 0), (1, "WRITE_FILE", 1 << 1), (1, "READ_FILE", 1 << 2),
    (1, "READ_DIR", 1 << 3), (1, "REMOVE_DIR", 1 << 4), (1, "REMOVE_FILE", 1 << 5),
    (1, "MAKE_CHAR", 1 << 6), (1, "MAKE_DIR", 1 << 7), (1, "MAKE_REG", 1 << 8),
    (1, "MAKE_SOCK", 1 << 9), (1, "MAKE_FIFO", 1 << 10), (1, "MAKE_BLOCK", 1 << 11),
    (1, "MAKE_SYM", 1 << 12), (2, "REFER", 1 << 13), (3, "TRUNCATE", 1 << 14),
    (5, "IOCTL_DEV", 1 << 15),
]  # fmt: skip
_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
_LIST = 1 << 3  # read dir only: the ancestors of hidden paths
_CONTENTS = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # execute, read/write file...
_FILE_ONLY = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
_WRITES = ((1 << 15) - 1) & ~_READ  # write, remove, make, refer, truncate
_DEVICES = ("/dev/null", "/dev/zero", "/dev/tty", "/dev/urandom", "/dev/random")
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)


class LandlockError(OSError):
    """Landlock or seccomp could not be applied; the sandbox must not start."""


def abi_version() -> int:
    """The kernel's Landlock ABI, 0 when Landlock is unavailable."""
    if os.uname().sysname != "Linux":
        return 0
    version = _libc.syscall(_SYSCALLS["create"], None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(0, version)


def restrict(writable: Iterable[str], hidden: Iterable[str] = (), *, allow_network: bool) -> None:
    """Confine this process and its future children: read and execute anywhere except the
    `hidden` paths, write only beneath `writable`, no TCP unless allowed (ABI >= 4), no signals
    to and no abstract unix sockets of processes outside the sandbox (ABI >= 6). Irreversible.
    The caller adds the seccomp filter (`seccomp.install`)."""
    abi = abi_version()
    if abi < 1:
        raise LandlockError(errno.ENOSYS, "Landlock is not available in this kernel")
    handled = 0
    for version, _, bit in _FS_RIGHTS:
        if version <= abi:
            handled |= bit
    net = 0 if allow_network or abi < 4 else _NET_BIND_TCP | _NET_CONNECT_TCP
    if abi >= 6:
        attr = struct.pack("QQQ", handled, net, _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL)
    elif abi >= 4:
        attr = struct.pack("QQ", handled, net)
    else:
        attr = struct.pack("Q", handled)
    ruleset = _create(attr)
    try:
        hidden = list(hidden)
        readable, listable = split_around(["/"], hidden)
        for path in listable:
            _add_path(ruleset, path, _LIST & handled)
        for path in readable:
            _add_path(ruleset, path, _READ & handled)
        granted, around = split_around(writable, hidden)
        for path in around:
            _add_path(ruleset, path, handled & ~_CONTENTS)
        for path in granted:
            _add_path(ruleset, path, handled)
        for device in _DEVICES:
            _add_path(ruleset, device, ((1 << 1) | (1 << 2)) & handled)
        _enforce(ruleset)
    finally:
        os.close(ruleset)


def restrict_writes(granted: Iterable[int], writable: Iterable[str]) -> None:
    """Add a layer that handles only the rights that change the filesystem (reading stays as
    the layers below allow): grant them beneath each of the `granted` descriptors (O_PATH, the
    caller keeps them) and each `writable` path, and writing the usual devices. Irreversible."""
    abi = abi_version()
    if abi < 1:
        raise LandlockError(errno.ENOSYS, "Landlock is not available in this kernel")
    handled = 0
    for version, _, bit in _FS_RIGHTS:
        if version <= abi:
            handled |= bit
    handled &= _WRITES
    ruleset = _create(struct.pack("Q", handled))
    try:
        for fd in granted:
            _add_fd(ruleset, fd, handled, "a workspace entry")
        for path in writable:
            _add_path(ruleset, path, handled)
        for device in _DEVICES:
            _add_path(ruleset, device, (1 << 1) & handled)
        _enforce(ruleset)
    finally:
        os.close(ruleset)


def _create(attr: bytes) -> int:
    ruleset = _libc.syscall(_SYSCALLS["create"], attr, ctypes.c_size_t(len(attr)), 0)
    if ruleset < 0:
        _raise("landlock_create_ruleset")
    return int(ruleset)


def _enforce(ruleset: int) -> None:
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise("prctl(NO_NEW_PRIVS)")
    if _libc.syscall(_SYSCALLS["restrict"], ruleset, 0) != 0:
        _raise("landlock_restrict_self")


def split_around(roots: Iterable[str], hidden: Iterable[str]) -> tuple[list[str], list[str]]:
    """Landlock rules only add rights, so hiding a path beneath a granted root means granting
    everything around it instead: each sibling of the hidden path and of each of its ancestors
    up to the root. Returns (the paths to grant whole, the ancestors of hidden paths, which get
    only the rights that do not reach file contents). Symlinked siblings get no rule: their
    targets are governed where they really are. Paths are strings (no pathlib: the launcher
    starts before every command and imports as little as it can)."""
    targets = {os.path.realpath(p) for p in hidden if os.path.lexists(p)}
    ancestors: set[str] = set()
    for target in targets:
        parent = os.path.dirname(target)
        while parent not in ancestors:
            ancestors.add(parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    whole: list[str] = []
    split: list[str] = []
    todo = [os.path.normpath(r) for r in roots if os.path.normpath(r) not in targets]
    while todo:
        path = todo.pop()
        if path not in ancestors or os.path.islink(path) or not os.path.isdir(path):
            whole.append(path)
            continue
        split.append(path)
        try:
            children = list(os.scandir(path))
        except OSError:
            continue
        todo += [c.path for c in children if c.path not in targets and not c.is_symlink()]
    return whole, split


def _add_path(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return  # gone since it was listed
    try:
        _add_fd(ruleset, fd, rights, path)
    finally:
        os.close(fd)


def _add_fd(ruleset: int, fd: int, rights: int, what: str) -> None:
    if not stat.S_ISDIR(os.fstat(fd).st_mode):
        rights &= _FILE_ONLY
    rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr (packed)
    if _libc.syscall(_SYSCALLS["add"], ruleset, _RULE_PATH_BENEATH, rule, 0) != 0:
        _raise(f"landlock_add_rule({what})")


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise LandlockError(code, f"{what} failed: {os.strerror(code)}")
