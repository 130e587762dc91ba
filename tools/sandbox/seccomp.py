"""The seccomp filter every sandboxed command runs under (both backends): a classic BPF program,
built here as bytes (pure) and installed by the launcher or handed to bubblewrap's `--seccomp`.

What it refuses (EACCES, the process keeps running):
- every syscall of a non-native ABI: 32-bit `int 0x80` and x32 on x86_64, AArch32 on arm64
  (their socket calls would bypass the checks below);
- `socket()` of AF_PACKET (raw frames: sniffing loopback) and AF_NETLINK (the host's routes,
  addresses, firewall), always;
- `socket()` of AF_INET/AF_INET6 when the network is off (this also closes UDP);
- `socket()` of AF_UNIX when asked (the Landlock backend with the network off: Landlock cannot
  tell a socket in the workspace from /run/docker.sock; `socketpair()` keeps working);
- `io_uring_setup` (io_uring opens sockets without the `socket()` syscall);
- chmod to a setuid or setgid mode, and creating a file with one (open/openat with O_CREAT,
  creat, mknod): no command may leave a setuid program behind (as root it could otherwise
  make a setuid-root program for any user of the host); `openat2`, whose mode the filter
  cannot read, fails with ENOSYS, as on kernels before 5.6 (callers fall back to openat).
Stdlib only: the launcher loads it without site-packages.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

AF_UNIX, AF_INET, AF_NETLINK, AF_INET6, AF_PACKET = 1, 2, 16, 10, 17
_X32_BIT = 0x40000000
# machine -> (AUDIT_ARCH of the native ABI, socket nr, io_uring_setup nr, refuse x32 numbers)
_ARCHES = {
    "x86_64": (0xC000003E, 41, 425, True),
    "aarch64": (0xC00000B7, 198, 425, False),
}
# machine -> (syscall nr, index of its mode argument): chmod, fchmod, fchmodat, fchmodat2
_CHMODS = {
    "x86_64": ((90, 1), (91, 1), (268, 2), (452, 2)),
    "aarch64": ((52, 1), (53, 2), (452, 2)),
}
# machine -> (syscall nr, index of its flags argument or None: always creates, index of its
# mode argument): the calls that create a file with a mode (open, openat, creat, mknod(at))
_CREATES = {
    "x86_64": ((2, 1, 2), (257, 2, 3), (85, None, 1), (133, None, 1), (259, None, 2)),
    "aarch64": ((56, 2, 3), (33, None, 2)),
}
_CREATE_FLAGS = 0o100 | 0o20000000  # O_CREAT | __O_TMPFILE (same on both machines)
_OPENAT2 = 437  # its mode lies in a struct the filter cannot read: ENOSYS (callers fall back)
_SETID = 0o6000  # S_ISUID | S_ISGID
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # LD|W|ABS, JMP|JEQ/JGE/JSET|K, RET|K
_ALLOW = 0x7FFF0000
_DENY = 0x00050000 | errno.EACCES  # SECCOMP_RET_ERRNO | EACCES
_NOSYS = 0x00050000 | errno.ENOSYS


class SeccompError(OSError):
    """The filter could not be built or installed; the command must not run."""


def supported() -> bool:
    uname = os.uname()
    return uname.sysname == "Linux" and uname.machine in _ARCHES


def denied_families(*, allow_network: bool, deny_unix: bool) -> tuple[int, ...]:
    families = [AF_PACKET, AF_NETLINK]
    if not allow_network:
        families += [AF_INET, AF_INET6]
    if deny_unix:
        families.append(AF_UNIX)
    return tuple(families)


def program(families: tuple[int, ...], machine: str | None = None) -> bytes:
    """The filter as `struct sock_filter[]` bytes, for this machine (or `machine`)."""
    machine = machine or os.uname().machine
    if machine not in _ARCHES:
        raise SeccompError(errno.ENOSYS, f"no seccomp filter for {machine}")
    arch, socket_nr, io_uring_nr, x32 = _ARCHES[machine]

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    deny_family = [op(_JEQ, len(families) - i, 0, family) for i, family in enumerate(families)]
    deny_setid = []
    for nr, arg in _CHMODS[machine]:
        deny_setid += [
            op(_JEQ, 0, 4, nr),  # not this chmod: on to the next check
            op(_LD, 0, 0, 16 + 8 * arg),  # its mode argument (low 32 bits)
            op(_JSET, 0, 1, _SETID),
            op(_RET, 0, 0, _DENY),
            op(_RET, 0, 0, _ALLOW),
        ]
    for nr, flags, mode in _CREATES[machine]:
        test_mode = [
            op(_LD, 0, 0, 16 + 8 * mode),
            op(_JSET, 0, 1, _SETID),
            op(_RET, 0, 0, _DENY),
            op(_RET, 0, 0, _ALLOW),
        ]
        if flags is None:
            deny_setid += [op(_JEQ, 0, 4, nr), *test_mode]
        else:  # only when it creates: then the mode counts
            deny_setid += [
                op(_JEQ, 0, 6, nr),
                op(_LD, 0, 0, 16 + 8 * flags),
                op(_JSET, 0, 3, _CREATE_FLAGS),
                *test_mode,
            ]
    deny_setid += [op(_JEQ, 0, 1, _OPENAT2), op(_RET, 0, 0, _NOSYS)]
    body = [
        op(_LD, 0, 0, 4),  # seccomp_data.arch
        op(_JEQ, 1, 0, arch),
        op(_RET, 0, 0, _DENY),  # another ABI: refused whole
        op(_LD, 0, 0, 0),  # seccomp_data.nr
        *([op(_JGE, 0, 1, _X32_BIT), op(_RET, 0, 0, _DENY)] if x32 else []),
        op(_JEQ, 0, 1, io_uring_nr),
        op(_RET, 0, 0, _DENY),
        *deny_setid,
        op(_JEQ, 1, 0, socket_nr),
        op(_RET, 0, 0, _ALLOW),  # not socket(): allowed
        op(_LD, 0, 0, 16),  # seccomp_data.args[0], low 32 bits: the address family
        *deny_family,
        op(_RET, 0, 0, _ALLOW),
        op(_RET, 0, 0, _DENY),
    ]
    return b"".join(body)


def install(filter_bytes: bytes) -> None:
    """Load the filter into this process (inherited by every child, irreversible); sets
    no_new_privs first, as the kernel requires of an unprivileged caller."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise(libc, "prctl(NO_NEW_PRIVS)")
    buffer = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))
    fprog = struct.pack("HxxxxxxQ", len(filter_bytes) // 8, ctypes.addressof(buffer))
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0) != 0:
        _raise(libc, "prctl(SECCOMP)")


def _raise(libc: ctypes.CDLL, what: str) -> None:
    code = ctypes.get_errno()
    raise SeccompError(code, f"{what} failed: {os.strerror(code)}")
