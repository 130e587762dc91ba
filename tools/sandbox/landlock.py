"""The Landlock + seccomp backend, for machines where namespaces are blocked (Docker's default
profile, GitHub runners): applied in a small launcher process just before `exec`.

Landlock rules only add rights, so the workspace's `.git` and `.m2agent` stay read-only by
granting write access to every *other* child of the workspace (and to a private temp folder),
never to the workspace folder itself: a command can change files in existing folders and
top-level files, but cannot create new top-level entries. Network: Landlock (ABI >= 4) denies
TCP bind/connect, and a seccomp filter refuses AF_INET/AF_INET6 sockets, which also closes UDP.
Linux only; plain ctypes, no dependency.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from collections.abc import Iterable
from pathlib import Path

_SYSCALLS = {  # landlock_create_ruleset, landlock_add_rule, landlock_restrict_self (same on arm64)
    "create": 444,
    "add": 445,
    "restrict": 446,
}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

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
_FILE_ONLY = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)


class LandlockError(OSError):
    """Landlock or seccomp could not be applied; the sandbox must not start."""


def abi_version() -> int:
    """The kernel's Landlock ABI, 0 when Landlock is unavailable."""
    if platform.system() != "Linux":
        return 0
    version = _libc.syscall(_SYSCALLS["create"], None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(0, version)


def restrict(writable: Iterable[Path], *, allow_network: bool) -> None:
    """Confine this process and its future children: read and execute anywhere, write only
    beneath `writable`, and no IP networking unless allowed. Irreversible."""
    abi = abi_version()
    if abi < 1:
        raise LandlockError(errno.ENOSYS, "Landlock is not available in this kernel")
    handled = 0
    for version, _, bit in _FS_RIGHTS:
        if version <= abi:
            handled |= bit
    net = 0 if allow_network or abi < 4 else _NET_BIND_TCP | _NET_CONNECT_TCP
    attr = struct.pack("QQQ", handled, net, 0) if abi >= 4 else struct.pack("Q", handled)
    ruleset = _libc.syscall(_SYSCALLS["create"], attr, ctypes.c_size_t(len(attr)), 0)
    if ruleset < 0:
        _raise("landlock_create_ruleset")
    try:
        _add_path(ruleset, Path("/"), _READ & handled)
        for path in writable:
            rights = handled if path.is_dir() else _FILE_ONLY & handled
            _add_path(ruleset, path, rights)
        for device in ("/dev/null", "/dev/zero", "/dev/tty", "/dev/urandom"):
            if Path(device).exists():
                _add_path(ruleset, Path(device), ((1 << 1) | (1 << 2)) & handled)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            _raise("prctl(NO_NEW_PRIVS)")
        if _libc.syscall(_SYSCALLS["restrict"], ruleset, 0) != 0:
            _raise("landlock_restrict_self")
    finally:
        os.close(ruleset)
    if not allow_network:
        _deny_ip_sockets()


def _add_path(ruleset: int, path: Path, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr (packed)
        if _libc.syscall(_SYSCALLS["add"], ruleset, _RULE_PATH_BENEATH, rule, 0) != 0:
            _raise(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _deny_ip_sockets() -> None:
    """seccomp: socket(AF_INET | AF_INET6, ...) fails with EACCES; everything else runs."""
    known = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
    if platform.machine() not in known:
        raise LandlockError(errno.ENOSYS, f"no seccomp filter for {platform.machine()}")
    arch, socket_nr = known[platform.machine()]

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    ld, jeq, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    allow, deny = 0x7FFF0000, 0x00050000 | errno.EACCES  # SECCOMP_RET_ALLOW, RET_ERRNO|EACCES
    program = b"".join(
        [
            op(ld, 0, 0, 4),  # seccomp_data.arch
            op(jeq, 1, 0, arch),
            op(ret, 0, 0, allow),  # another ABI (e.g. 32-bit): leave it to Landlock
            op(ld, 0, 0, 0),  # seccomp_data.nr
            op(jeq, 0, 3, socket_nr),  # not socket(): allow
            op(ld, 0, 0, 16),  # seccomp_data.args[0] (low 32 bits): the address family
            op(jeq, 2, 0, 2),  # AF_INET
            op(jeq, 1, 0, 10),  # AF_INET6
            op(ret, 0, 0, allow),
            op(ret, 0, 0, deny),
        ]
    )
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        _raise("prctl(SECCOMP)")


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise LandlockError(code, f"{what} failed: {os.strerror(code)}")
