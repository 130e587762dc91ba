"""The Landlock backend's broker: lets a command create, remove and rename entries at the top
level of the workspace, as under bubblewrap, while `.git`, `.m2agent` and hidden secrets stay
untouchable.

The command runs under two Landlock layers. The second grants writes beneath each existing
top-level entry (split around hidden secrets, as the first is), never the workspace folder
itself: a rule there would reach `.git`. The folders no rule covers are "guarded": the
workspace, and the folders that hold a secret. The command's mutating path syscalls
(`notify.SYSCALLS`) stop at a seccomp listener held here, in the launcher, which has only the
first layer (write anywhere in the workspace). For each one the broker reads the path once from
the thread's memory and resolves it itself, one component at a time with O_NOFOLLOW from its
own descriptors (symlinks spliced in, at most 40), to a parent folder and a name:

- the parent is guarded: the broker performs the operation with its own descriptors, in the
  command's umask, and returns the result (an opened file is installed in the command), unless
  the name is guarded there (`.git`, `.m2agent`, a secret, a folder holding one; even absent);
- the parent lies beneath a guarded folder but no rule (made or moved there during the command,
  found by walking `..`): the broker performs it too;
- anything else (.git, .m2agent, hidden folders, ruled entries, the temp folder, outside,
  whatever it cannot resolve or read): CONTINUE, the kernel decides under both layers.

Why no race helps: CONTINUE is always judged by the kernel under layer 2, which grants no
guarded folder and nothing in `.git`, so changing the path after the broker looked gains
nothing; performed operations use only descriptors the broker resolved, never a second read of
the command's memory, and cannot leave the workspace and temp folder (layer 1); nothing in the
sandbox can move anything into, out of or within `.git` or a hidden folder, so "inside .git"
cannot change while the broker acts. Stdlib only; the launcher imports it before every command.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable

from m2agent.tools.sandbox import notify

_MAX_LINKS = 40
_AT_FDCWD = -100
_AT_REMOVEDIR, _AT_SYMLINK_FOLLOW, _AT_EMPTY_PATH = 0x200, 0x400, 0x1000
_PATH = os.O_PATH | os.O_CLOEXEC
_Key = tuple[int, int]
_NO_SETID = 0o1777  # the broker never creates a setuid or setgid file (see seccomp.py)


class Proceed(Exception):
    """Let the kernel decide (under the command's own Landlock layers)."""


class Broker:
    """Answers the notifications of one command's listener. Folders are known by (st_dev,
    st_ino): `ruled`, the entries layer 2 grants; `guarded`, the folders no rule covers, each
    with the names never touched in it; `protected`, the folders never acted in."""

    def __init__(
        self,
        ruled: set[_Key],
        guarded: dict[_Key, set[str]],
        protected: set[_Key],
        listener: int,
    ) -> None:
        self.listener = listener
        notify.wake_synchronously(listener)
        self.slash = _key(os.stat("/"))
        self.proc_dev = os.stat("/proc").st_dev
        self.guarded = guarded  # folder -> the names (casefolded) never touched in it
        self.protected = protected
        self.ruled = ruled
        self.where: dict[_Key, str] = {}  # folder -> its class (cleared on rename and rmdir)
        os.umask(0)  # each creation applies the command's own umask, read when it asks

    def handle(self) -> None:
        """Answer the next notification (the listener is readable)."""
        note = notify.receive(self.listener)
        if note is None:
            return
        try:
            self._handle(note)
        except Exception:  # Proceed, or anything unforeseen: the kernel decides, under layer 2
            notify.proceed(self.listener, note.id)

    def _handle(self, note: notify.Notification) -> None:
        name = _NAMES.get(note.nr)
        if name is None:
            raise Proceed
        removing_dir = name == "rmdir" or (name == "unlinkat" and note.args[2] & _AT_REMOVEDIR)
        if removing_dir or name.startswith("rename"):
            self.where.clear()  # a folder may move or go (its inode reused), its class with it
        with _Thread(note.pid, self, note.id) as thread:
            getattr(self, _METHODS[name])(thread, note.args, name)

    # -- one method per kind of syscall; each raises Proceed unless the broker acts

    def _open(self, thread: _Thread, a: list[int], name: str) -> None:
        if name == "creat":
            dirfd, addr, flags, mode = _AT_FDCWD, a[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, a[1]
        elif name == "open":
            dirfd, addr, flags, mode = _AT_FDCWD, a[0], a[1], a[2]
        else:
            dirfd, addr, flags, mode = a[0], a[1], a[2], a[3]
        flags &= 0xFFFFFFFF
        if flags & os.O_TMPFILE == os.O_TMPFILE or flags & os.O_PATH:
            raise Proceed
        follow = not flags & os.O_NOFOLLOW and not (flags & os.O_CREAT and flags & os.O_EXCL)
        path = thread.string(addr)
        own = flags & ~os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        for _ in range(3):  # the final name may turn into a symlink meanwhile: resolve again
            parent, last = self._resolve(thread, dirfd, path, follow, slash_ok=False)
            with parent:
                self._decide(thread, [(parent, last)])
                created = mode & _NO_SETID & ~thread.umask() if flags & os.O_CREAT else 0
                try:
                    fd = os.open(last, own, created, dir_fd=parent.fd)
                except OSError as e:
                    if e.errno == errno.ELOOP and follow:
                        continue
                    notify.answer(self.listener, thread.id, error=e.errno or errno.EIO)
                    return
            try:
                if not flags & os.O_NONBLOCK:
                    os.set_blocking(fd, True)
                notify.answer_with_fd(self.listener, thread.id, fd, bool(flags & os.O_CLOEXEC))
            finally:
                os.close(fd)
            return
        raise Proceed

    def _mkdir(self, thread: _Thread, a: list[int], name: str) -> None:
        dirfd, addr, mode = (_AT_FDCWD, a[0], a[1]) if name == "mkdir" else (a[0], a[1], a[2])
        parent, last = self._one(thread, dirfd, addr, follow=False, slash_ok=True)
        with parent:
            mode = mode & 0o7777 & ~thread.umask()
            self._run(thread, lambda: os.mkdir(last, mode, dir_fd=parent.fd))

    def _mknod(self, thread: _Thread, a: list[int], name: str) -> None:
        dirfd, addr, mode, dev = (_AT_FDCWD, a[0], a[1], a[2]) if name == "mknod" else a[:4]
        parent, last = self._one(thread, dirfd, addr, follow=False)
        with parent:
            mode = mode & 0o170000 | mode & _NO_SETID & ~thread.umask()  # type and permissions
            self._run(thread, lambda: os.mknod(last, mode, dev & 0xFFFFFFFF, dir_fd=parent.fd))

    def _unlink(self, thread: _Thread, a: list[int], name: str) -> None:
        if name == "unlinkat":
            dirfd, addr, flags = a[0], a[1], a[2] & 0xFFFFFFFF
        else:
            dirfd, addr, flags = _AT_FDCWD, a[0], _AT_REMOVEDIR if name == "rmdir" else 0
        if flags & ~_AT_REMOVEDIR:
            raise Proceed
        folder = bool(flags & _AT_REMOVEDIR)
        parent, last = self._one(thread, dirfd, addr, follow=False, slash_ok=folder)
        with parent:
            remove = os.rmdir if folder else os.unlink
            self._run(thread, lambda: remove(last, dir_fd=parent.fd))

    def _rename(self, thread: _Thread, a: list[int], name: str) -> None:
        if name in ("rename", "link"):
            olddir, old, newdir, new, flags = _AT_FDCWD, a[0], _AT_FDCWD, a[1], 0
        else:
            olddir, old, newdir, new = a[0], a[1], a[2], a[3]
            flags = a[4] & 0xFFFFFFFF if name in ("renameat2", "linkat") else 0
        linking = name.startswith("link")
        if linking and flags & ~_AT_SYMLINK_FOLLOW:
            raise Proceed  # AT_EMPTY_PATH: a descriptor, which the broker cannot place
        old_path, new_path = thread.string(old), thread.string(new)
        follow = linking and bool(flags & _AT_SYMLINK_FOLLOW)
        a_fd, a_last = self._resolve(thread, olddir, old_path, follow, slash_ok=not linking)
        with a_fd:
            b_fd, b_last = self._resolve(thread, newdir, new_path, False, slash_ok=not linking)
            with b_fd:
                self._decide(thread, [(a_fd, a_last), (b_fd, b_last)])
                if linking:
                    self._run(thread, lambda: os.link(
                        a_last, b_last, src_dir_fd=a_fd.fd, dst_dir_fd=b_fd.fd,
                        follow_symlinks=False))  # fmt: skip
                else:
                    self._run(thread, lambda: _renameat2(a_fd.fd, a_last, b_fd.fd, b_last, flags))

    def _symlink(self, thread: _Thread, a: list[int], name: str) -> None:
        target_addr, dirfd, addr = (
            (a[0], _AT_FDCWD, a[1]) if name == "symlink" else (a[0], a[1], a[2])
        )
        target = thread.string(target_addr)
        parent, last = self._one(thread, dirfd, addr, follow=False)
        with parent:
            self._run(thread, lambda: os.symlink(target, last, dir_fd=parent.fd))

    def _truncate(self, thread: _Thread, a: list[int], name: str) -> None:
        length = _signed64(a[1])

        def truncate(last: str, parent: int) -> None:
            flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(last, flags, dir_fd=parent)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)

        parent, last = self._one(thread, _AT_FDCWD, a[0], follow=True)
        with parent:
            self._run(thread, lambda: truncate(last, parent.fd))

    def _run(self, thread: _Thread, operation: Callable[[], object]) -> None:
        """Perform the operation (it is the broker's to do) and answer with its outcome."""
        try:
            operation()
        except OSError as e:
            notify.answer(self.listener, thread.id, error=e.errno or errno.EIO)
            return
        notify.answer(self.listener, thread.id)

    def _one(
        self, thread: _Thread, dirfd: int, addr: int, *, follow: bool, slash_ok: bool = False
    ) -> tuple[_Fd, str]:
        """The single operand, resolved and judged: Proceed unless the broker must act."""
        parent, last = self._resolve(thread, dirfd, thread.string(addr), follow, slash_ok)
        try:
            self._decide(thread, [(parent, last)])
        except BaseException:
            parent.close()
            raise
        return parent, last

    # -- judging

    def _decide(self, thread: _Thread, operands: list[tuple[_Fd, str]]) -> None:
        """Return when the broker must perform the operation; Proceed otherwise."""
        mine = False
        for parent, last in operands:
            info = os.fstat(parent.fd)
            if info.st_dev == self.proc_dev:
                raise Proceed  # magic links: only the kernel follows them right
            key = _key(info)
            names = self.guarded.get(key)
            if names is not None:  # the workspace folder, or a folder holding a secret
                if last.casefold() in names:
                    raise Proceed
                mine = True
                continue
            where = self.classify(key, parent.fd)
            if where == "protected":
                raise Proceed
            mine = mine or where == "new"
        if not mine:
            raise Proceed
        thread.confirm()

    def classify(self, key: _Key, folder: int) -> str:
        """Where a folder that is not guarded lies, by walking `..`: 'protected' (in .git,
        .m2agent or a hidden folder), 'ruled' (beneath an entry layer 2 grants), 'new' (beneath
        a guarded folder but no rule: made or moved there during the command) or 'outside'."""
        if key in self.where:
            return self.where[key]
        chain: list[_Key] = []
        current = os.dup(folder)
        try:
            while True:
                if key in self.protected:
                    found = "protected"
                elif key in self.ruled:
                    found = "ruled"
                elif key in self.guarded:
                    found = "new"
                elif key == self.slash or key in chain or len(chain) > 4096:
                    found = "outside"
                else:
                    chain.append(key)
                    up = os.open("..", _PATH, dir_fd=current)
                    os.close(current)
                    current = up
                    key = _key(os.fstat(current))
                    if key not in self.where:
                        continue
                    found = self.where[key]
                break
        finally:
            os.close(current)
        for member in chain:
            self.where[member] = found
        self.where[key] = found
        return found

    # -- resolving

    def _resolve(
        self, thread: _Thread, dirfd: int, path: str, follow: bool, slash_ok: bool
    ) -> tuple[_Fd, str]:
        """(the parent folder, the final name) as the kernel would reach them, resolved with
        the broker's own descriptors. Proceed on anything unusual (the kernel then gives its
        own answer: ENOENT, ENOTDIR, ELOOP...)."""
        if not path or path.startswith(("/proc/", "/dev/")) or path in ("/proc", "/dev"):
            raise Proceed
        trailing = path.endswith("/")  # "name/": a folder, through a final symlink too
        if trailing:
            if not slash_ok:
                raise Proceed
            path = path.rstrip("/")
            if not path:
                raise Proceed
        if path.startswith("/"):
            current = os.open("/", _PATH | os.O_DIRECTORY)
        else:
            current = thread.start(dirfd)
        pending = [p for p in reversed(path.split("/")) if p and p != "."]
        if not pending or path.endswith(("/.", "/..")) or path in (".", ".."):
            os.close(current)
            raise Proceed
        links = 0
        try:
            while True:
                part = pending.pop()
                if not pending and part != ".." and (not follow or not _is_link(part, current)):
                    if trailing and _is_link(part, current):
                        raise Proceed  # the kernel follows it: let it judge
                    found, current = current, -1
                    return _Fd(found), part  # (the caller checks it is not in /proc)
                try:  # a folder (the common case) in one call; anything else is looked at
                    step = os.open(part, _PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=current)
                except NotADirectoryError:
                    step = -1
                if step < 0:
                    if not _is_link(part, current):
                        raise Proceed  # ENOTDIR: the kernel says so
                    links += 1
                    if links > _MAX_LINKS:
                        raise Proceed
                    target = os.readlink(part, dir_fd=current)
                    if not target:
                        raise Proceed
                    if target.startswith("/"):
                        os.close(current)
                        current = os.open("/", _PATH | os.O_DIRECTORY)
                    more = [p for p in reversed(target.split("/")) if p and p != "."]
                    if not pending and (target.endswith(("/", "/.", "/..")) or not more):
                        raise Proceed  # a final link to a folder: not a name to create
                    pending += more
                    continue
                os.close(current)
                current = step
                if not pending:
                    raise Proceed  # ended on ".."
        finally:
            if current >= 0:
                os.close(current)


class _Fd:
    """A descriptor the broker owns, closed on leaving a `with`."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *_exc: object) -> None:
        self.close()


class _Thread:
    """What the broker reads of the notifying thread, through /proc."""

    def __init__(self, pid: int, broker: Broker, notification_id: int) -> None:
        self.pid, self.broker, self.id = pid, broker, notification_id
        self.mem = -1

    def __enter__(self) -> _Thread:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.mem >= 0:
            os.close(self.mem)

    def confirm(self) -> None:
        """What was read from /proc was this thread's: it still waits in its syscall, so its
        pid was not reused meanwhile. Checked once, before the broker acts; a stale read could
        only make it do what the rules allow anyway (the rules judge, not who asks)."""
        if not notify.still_pending(self.broker.listener, self.id):
            raise Proceed

    def string(self, addr: int) -> str:
        """A NUL-terminated path, read a page at a time (the next page may be unmapped)."""
        if self.mem < 0:
            self.mem = os.open(f"/proc/{self.pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        data = b""
        while len(data) < 4096:
            chunk = os.pread(self.mem, 4096 - (addr + len(data)) % 4096, addr + len(data))
            if not chunk:
                raise Proceed
            end = chunk.find(b"\0")
            if end >= 0:
                return os.fsdecode(data + chunk[:end])
            data += chunk
        raise Proceed  # ENAMETOOLONG: the kernel says so

    def start(self, dirfd: int) -> int:
        """The folder a relative path starts from: the thread's cwd or its `dirfd`."""
        dirfd = _signed32(dirfd)
        where = "cwd" if dirfd == _AT_FDCWD else f"fd/{dirfd}"
        if dirfd != _AT_FDCWD and dirfd < 0:
            raise Proceed
        return os.open(f"/proc/{self.pid}/{where}", _PATH | os.O_DIRECTORY)

    def umask(self) -> int:
        with open(f"/proc/{self.pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
        raise Proceed


def _is_link(name: str, folder: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _key(info: os.stat_result) -> _Key:
    return info.st_dev, info.st_ino


def _signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def _signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _renameat2(olddir: int, old: str, newdir: int, new: str, flags: int) -> None:
    if not flags:
        os.rename(old, new, src_dir_fd=olddir, dst_dir_fd=newdir)
        return
    import ctypes  # loaded already by landlock.py

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(olddir, os.fsencode(old), newdir, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


_METHODS = {
    "open": "_open", "openat": "_open", "creat": "_open",
    "mkdir": "_mkdir", "mkdirat": "_mkdir", "mknod": "_mknod", "mknodat": "_mknod",
    "unlink": "_unlink", "unlinkat": "_unlink", "rmdir": "_unlink",
    "rename": "_rename", "renameat": "_rename", "renameat2": "_rename",
    "link": "_rename", "linkat": "_rename", "symlink": "_symlink", "symlinkat": "_symlink",
    "truncate": "_truncate",
}  # fmt: skip
_NAMES = {nr: name for name, nr in notify.SYSCALLS.get(os.uname().machine, {}).items()}
