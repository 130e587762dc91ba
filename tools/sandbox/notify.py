"""Seccomp user notification, the kernel ABI the Landlock backend's broker (`broker.py`) uses:
the BPF filter that sends a command's mutating path syscalls to a listener, and the ioctls to
receive one, answer it (continue, an error, a value, an injected descriptor) and check that it
is still pending. Linux >= 5.14 (SECCOMP_ADDFD_FLAG_SEND). Stdlib only, few imports: the
launcher loads it, without site-packages, before every command.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct

# Mutating path syscalls, by machine: name -> number. The broker decodes each by name.
# (openat2 is not here: the main filter answers it ENOSYS, see seccomp.py.)
SYSCALLS = {
    "x86_64": {
        "open": 2, "openat": 257, "creat": 85, "mkdir": 83, "mkdirat": 258,
        "mknod": 133, "mknodat": 259, "unlink": 87, "unlinkat": 263, "rmdir": 84,
        "rename": 82, "renameat": 264, "renameat2": 316, "link": 86, "linkat": 265,
        "symlink": 88, "symlinkat": 266, "truncate": 76,
    },
    "aarch64": {  # the generic table: no legacy open, mkdir, rename...
        "openat": 56, "mkdirat": 34, "mknodat": 33, "unlinkat": 35,
        "renameat": 38, "renameat2": 276, "linkat": 37, "symlinkat": 36, "truncate": 45,
    },
}  # fmt: skip
# open and openat are sent only when they may write: the index of their flags argument.
_FLAGS_ARG = {"open": 1, "openat": 2}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277}
_SET_MODE_FILTER, _FLAG_NEW_LISTENER = 1, 1 << 3
_RET_ALLOW, _RET_USER_NOTIF = 0x7FFF0000, 0x7FC00000
_LD, _JEQ, _JSET, _RET = 0x20, 0x15, 0x45, 0x06
# ioctls on the listener (_IOWR/_IOW('!', n, size)) and their structs
_RECV, _SEND, _ID_VALID, _ADDFD = 0xC0502100, 0xC0182101, 0x40082102, 0x40182103
_SET_FLAGS, _FD_SYNC_WAKE_UP = 0x40082104, 1
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, seccomp_data{nr, arch, ip, args[6]}
_RESP = struct.Struct("=QqiI")  # id, val, error, flags
_ADDFD_STRUCT = struct.Struct("=QIIII")  # id, flags, srcfd, newfd, newfd_flags
_FLAG_CONTINUE = 1
_ADDFD_FLAG_SEND = 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)


def supported() -> bool:
    """Whether this kernel and machine have everything the broker needs: Linux 5.14+, and
    the right to read its own descendants' memory (Yama's ptrace_scope below 2)."""
    uname = os.uname()
    if uname.sysname != "Linux" or uname.machine not in SYSCALLS:
        return False
    try:
        major, minor = (int(part) for part in uname.release.split(".")[:2])
    except ValueError:
        return False
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", "rb") as scope:
            if int(scope.read()) >= 2:
                return False
    except (OSError, ValueError):
        pass  # no Yama
    return (major, minor) >= (5, 14)


def program(machine: str | None = None) -> bytes:
    """The filter as `struct sock_filter[]` bytes: USER_NOTIF for the syscalls in SYSCALLS
    (open/openat only with a flag in WRITE_FLAGS), ALLOW for everything else. Other ABIs are
    allowed here: the main filter (`seccomp.py`) refuses them, and its errno wins."""
    machine = machine or os.uname().machine
    table = SYSCALLS[machine]

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    always = [nr for name, nr in table.items() if name not in _FLAGS_ARG]
    flagged = [(nr, _FLAGS_ARG[name]) for name, nr in table.items() if name in _FLAGS_ARG]
    body = [op(_LD, 0, 0, 4), op(_JEQ, 1, 0, _AUDIT_ARCH[machine]), op(_RET, 0, 0, _RET_ALLOW)]
    body.append(op(_LD, 0, 0, 0))  # seccomp_data.nr
    for nr, arg in flagged:  # not this one: on to the next block, the number still loaded
        body += [
            op(_JEQ, 0, 4, nr),
            op(_LD, 0, 0, 16 + 8 * arg),  # its flags argument, low 32 bits
            op(_JSET, 0, 1, WRITE_FLAGS),
            op(_RET, 0, 0, _RET_USER_NOTIF),
            op(_RET, 0, 0, _RET_ALLOW),  # a read-only open
        ]
    body += [op(_JEQ, len(always) - i, 0, nr) for i, nr in enumerate(always)]
    body += [op(_RET, 0, 0, _RET_ALLOW), op(_RET, 0, 0, _RET_USER_NOTIF)]
    return b"".join(body)


def install_listener(filter_bytes: bytes) -> int:
    """Load the filter into this process (no_new_privs must be set) and return the listener
    descriptor (close-on-exec). OSError when the kernel refuses."""
    buffer = ctypes.create_string_buffer(filter_bytes, len(filter_bytes))
    fprog = struct.pack("HxxxxxxQ", len(filter_bytes) // 8, ctypes.addressof(buffer))
    fd = _libc.syscall(
        _SYS_SECCOMP[os.uname().machine], _SET_MODE_FILTER, _FLAG_NEW_LISTENER, fprog
    )
    if fd < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"seccomp(NEW_LISTENER) failed: {os.strerror(code)}")
    return int(fd)


def wake_synchronously(listener: int) -> bool:
    """Ask the kernel (6.6+) to switch straight between the waiting thread and the broker, as
    a call would, instead of waking each through the scheduler: much faster round trips."""
    try:
        fcntl.ioctl(listener, _SET_FLAGS, struct.pack("=Q", _FD_SYNC_WAKE_UP))
    except OSError:
        return False
    return True


class Notification:
    """One syscall waiting for an answer: its id, the thread, the syscall number and its six
    arguments (unsigned 64-bit)."""

    __slots__ = ("args", "id", "nr", "pid")

    def __init__(self, raw: bytes) -> None:
        self.id, self.pid, _flags, self.nr, _arch, _ip, *args = _NOTIF.unpack(raw)
        self.args: list[int] = args


def receive(listener: int) -> Notification | None:
    """The next notification (call when the listener is readable); None when its thread died
    meanwhile."""
    buffer = bytearray(_NOTIF.size)
    try:
        fcntl.ioctl(listener, _RECV, buffer, True)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.EINTR):
            return None
        raise
    return Notification(bytes(buffer))


def still_pending(listener: int, notification_id: int) -> bool:
    """Whether the thread is still waiting in that syscall (so its pid was not reused): check
    after reading anything of it from /proc."""
    try:
        fcntl.ioctl(listener, _ID_VALID, struct.pack("=Q", notification_id))
    except OSError:
        return False
    return True


def proceed(listener: int, notification_id: int) -> None:
    """Let the kernel run the syscall itself, under the thread's own Landlock rules."""
    _send(listener, _RESP.pack(notification_id, 0, 0, _FLAG_CONTINUE))


def answer(listener: int, notification_id: int, value: int = 0, error: int = 0) -> None:
    """Complete the syscall with `value`, or fail it with errno `error`."""
    _send(listener, _RESP.pack(notification_id, value, -error if error else 0, 0))


def answer_with_fd(listener: int, notification_id: int, fd: int, cloexec: bool) -> None:
    """Install `fd` in the thread's process and complete the syscall with its number, in one
    step (SECCOMP_ADDFD_FLAG_SEND)."""
    addfd = bytearray(
        _ADDFD_STRUCT.pack(notification_id, _ADDFD_FLAG_SEND, fd, 0, os.O_CLOEXEC if cloexec else 0)
    )
    try:
        fcntl.ioctl(listener, _ADDFD, addfd, True)
    except OSError as e:
        if e.errno != errno.ENOENT:  # the thread died meanwhile
            answer(listener, notification_id, error=e.errno or errno.EIO)


def _send(listener: int, response: bytes) -> None:
    try:
        fcntl.ioctl(listener, _SEND, response)
    except OSError as e:
        if e.errno != errno.ENOENT:  # the thread died meanwhile
            raise
