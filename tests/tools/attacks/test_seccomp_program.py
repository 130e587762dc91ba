"""The seccomp filter's decisions, checked by running its BPF program in a small interpreter:
for the ABIs this kernel may not even have (i386 `int 0x80`, x32, AArch32), where the live
attacks in test_escape.py are skipped."""

from __future__ import annotations

import errno
import struct

import pytest

from m2agent.tools.sandbox import seccomp

X86_64, I386, AARCH64, ARM = 0xC000003E, 0x40000003, 0xC00000B7, 0x40000028
ALLOW, DENY = 0x7FFF0000, 0x00050000 | errno.EACCES


def run(program: bytes, arch: int, nr: int, *args: int) -> int:
    """Classic BPF over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6]}."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    ops = [struct.unpack("HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = ops[pc]
        if code == 0x20:  # ld [k]
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x15:  # jeq
            pc += jt if acc == k else jf
        elif code == 0x35:  # jge
            pc += jt if acc >= k else jf
        elif code == 0x45:  # jset
            pc += jt if acc & k else jf
        elif code == 0x06:  # ret
            return k
        else:
            raise AssertionError(f"unexpected BPF op {code:#x}")
        pc += 1


@pytest.mark.parametrize(
    "machine, native, foreign", [("x86_64", X86_64, I386), ("aarch64", AARCH64, ARM)]
)
def test_decisions(machine: str, native: int, foreign: int) -> None:
    socket_nr = {"x86_64": 41, "aarch64": 198}[machine]
    closed = seccomp.program(seccomp.denied_families(allow_network=False, deny_unix=True), machine)
    opened = seccomp.program(seccomp.denied_families(allow_network=True, deny_unix=False), machine)
    assert run(closed, foreign, 102, 1) == DENY  # any syscall of another ABI (socketcall here)
    assert run(opened, foreign, 359, 2) == DENY
    for family in (2, 10, 1, 16, 17):  # inet, inet6, unix, netlink, packet
        assert run(closed, native, socket_nr, family) == DENY
    assert run(opened, native, socket_nr, 2) == run(opened, native, socket_nr, 1) == ALLOW
    assert run(opened, native, socket_nr, 16) == run(opened, native, socket_nr, 17) == DENY
    assert run(closed, native, 425) == DENY  # io_uring_setup
    assert run(closed, native, 0) == ALLOW  # read
    fchmodat = {"x86_64": 268, "aarch64": 53}[machine]
    assert run(closed, native, fchmodat, 0, 0, 0o4755) == DENY  # setuid
    assert run(closed, native, fchmodat, 0, 0, 0o2755) == DENY  # setgid
    assert run(closed, native, fchmodat, 0, 0, 0o755) == ALLOW  # chmod +x stays possible
    assert run(closed, native, socket_nr, 2 | (1 << 32)) == DENY  # only the low 32 bits count
    if machine == "x86_64":
        assert run(opened, native, 0x40000000 | socket_nr, 2) == DENY  # x32
        assert run(opened, native, 0x40000000) == DENY


@pytest.mark.parametrize("machine, native", [("x86_64", X86_64), ("aarch64", AARCH64)])
def test_broker_filter_sends_only_what_may_change_the_filesystem(machine: str, native: int) -> None:
    """The Landlock backend's broker sees every syscall that may create, remove, rename or
    write a path (`open`/`openat` only with a write flag); everything else runs unseen."""
    from m2agent.tools.sandbox import notify

    program, table = notify.program(machine), notify.SYSCALLS[machine]
    notif = 0x7FC00000
    o_wronly, o_rdwr, o_creat, o_trunc, o_directory = 0o1, 0o2, 0o100, 0o1000, 0o200000
    for name, nr in table.items():
        if name in ("open", "openat"):
            at = 2 if name == "openat" else 1
            for flags in (o_wronly, o_rdwr, o_creat, o_trunc, o_creat | o_wronly | (1 << 33)):
                args = [0, 0, 0]
                args[at] = flags
                assert run(program, native, nr, *args) == notif, (name, flags)
            for flags in (0, o_directory, 1 << 32):  # read-only (the high half is ignored)
                args = [0, 0, 0]
                args[at] = flags
                assert run(program, native, nr, *args) == ALLOW, (name, flags)
        else:
            assert run(program, native, nr) == notif, name
    for nr in (0, 1, 59, 221):  # read, write, execve, fadvise64 / x86_64 numbers
        if nr not in table.values():
            assert run(program, native, nr) == ALLOW
    assert run(program, I386 if machine == "x86_64" else ARM, 5, o_creat) == ALLOW  # seccomp.py


@pytest.mark.parametrize("machine, native", [("x86_64", X86_64), ("aarch64", AARCH64)])
def test_no_file_is_created_setuid(machine: str, native: int) -> None:
    closed = seccomp.program(seccomp.denied_families(allow_network=False, deny_unix=True), machine)
    creat, write, tmpfile = 0o100 | 0o1, 0o1, 0o20000000 | 0o200000 | 0o2
    at = -100 & 0xFFFFFFFF
    openat, mknodat = {"x86_64": (257, 259), "aarch64": (56, 33)}[machine]
    for mode in (0o4755, 0o2755, 0o6755):
        assert run(closed, native, openat, at, 0, creat, mode) == DENY
        assert run(closed, native, openat, at, 0, tmpfile, mode) == DENY
        assert run(closed, native, mknodat, at, 0, 0o100000 | mode) == DENY
    assert run(closed, native, openat, at, 0, creat, 0o755) == ALLOW
    assert run(closed, native, openat, at, 0, write, 0o4755) == ALLOW  # no creation: no mode
    assert run(closed, native, mknodat, at, 0, 0o10644) == ALLOW  # a FIFO
    assert run(closed, native, 437) == 0x00050000 | errno.ENOSYS  # openat2
    if machine == "x86_64":
        assert run(closed, native, 2, 0, creat, 0o4755) == DENY  # open
        assert run(closed, native, 2, 0, write, 0o4755) == ALLOW
        assert run(closed, native, 85, 0, 0o4755) == DENY  # creat
        assert run(closed, native, 85, 0, 0o644) == ALLOW
        assert run(closed, native, 133, 0, 0o100000 | 0o4755) == DENY  # mknod
