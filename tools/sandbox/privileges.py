"""Process-level hardening with prctl/capset: drop every capability (the bounding set included),
no_new_privs, non-dumpable, child subreaper, resource limits. Stdlib only (ctypes), and few
imports: the launcher loads it, without site-packages, before every command. Linux only; each
call fails loudly."""

from __future__ import annotations

import ctypes
import os
import resource
import struct

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
# SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP(_LOCKED) | KEEP_CAPS_LOCKED
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20

_libc = ctypes.CDLL(None, use_errno=True)


class PrivilegeError(OSError):
    """A hardening step failed; the command must not run."""


def drop_capabilities() -> None:
    """Empty the bounding, ambient, inheritable, permitted and effective sets, and lock the
    securebits so that root regains nothing on execve. Root keeps uid 0 but no privilege."""
    with open("/proc/sys/kernel/cap_last_cap") as file:
        last = int(file.read())
    if os.geteuid() == 0:
        for cap in range(last + 1):
            if _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                _raise(f"prctl(CAPBSET_DROP, {cap})")
        if _libc.prctl(_PR_SET_SECUREBITS, _SECUREBITS, 0, 0, 0) != 0:
            _raise("prctl(SET_SECUREBITS)")
    _libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)  # EINVAL on old kernels
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    data = bytes(24)  # two empty __user_cap_data_struct: effective, permitted, inheritable
    machine = os.uname().machine
    if machine not in _SYS_CAPSET:
        raise PrivilegeError(0, f"capset: unknown machine {machine}")
    if _libc.syscall(_SYS_CAPSET[machine], header, data) != 0:
        _raise("capset")


def set_no_new_privs() -> None:
    if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise("prctl(NO_NEW_PRIVS)")


def set_dumpable(dumpable: bool) -> None:
    """A non-dumpable process cannot be ptraced by its own user, and its /proc/PID/environ and
    mem are root's: what a sandboxed command could otherwise read from its parent."""
    if _libc.prctl(_PR_SET_DUMPABLE, int(dumpable), 0, 0, 0) != 0:
        _raise("prctl(SET_DUMPABLE)")


def become_subreaper() -> None:
    """Orphans of this process's descendants (double forks, setsid) reparent here, not to
    init, so that they can all be found and killed."""
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        _raise("prctl(SET_CHILD_SUBREAPER)")


def die_with_parent(signal_number: int) -> None:
    if _libc.prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0) != 0:
        _raise("prctl(SET_PDEATHSIG)")


def processes_of(uid: int) -> int:
    """How many processes `uid` runs now (what RLIMIT_NPROC counts against)."""
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                count += os.stat(f"/proc/{name}").st_uid == uid
            except OSError:
                continue
    return count


def apply_limits(
    processes: int | None, memory_bytes: int | None, file_bytes: int | None, open_files: int | None
) -> None:
    """Set rlimits on this process, soft = hard (so no child can raise them), never above the
    current hard limit. `processes` counts on top of what the user already runs (RLIMIT_NPROC
    is per user). None: leave that limit alone."""
    if processes is not None:
        processes += processes_of(os.getuid())
    wanted = [
        (resource.RLIMIT_NPROC, processes),
        (resource.RLIMIT_DATA, memory_bytes),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_NOFILE, open_files),
    ]
    for which, value in wanted:
        if value is None:
            continue
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))


def _raise(what: str) -> None:
    code = ctypes.get_errno()
    raise PrivilegeError(code, f"{what} failed: {os.strerror(code)}")
