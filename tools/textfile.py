"""Files as the file tools must handle them: opened beneath a root without following any symlink
(so no race can redirect a read or a write), decoded in a way that re-encodes to the same bytes
(encoding, BOM, undecodable bytes, line endings), and replaced atomically keeping mode and
owner, or created following the umask."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from m2agent.tools.base import ToolError

_BOMS = (
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)


@dataclass(frozen=True, slots=True)
class TextFormat:
    """How a file's text is stored: `encode(decode(data)) == data` for every file we accept."""

    encoding: str = "utf-8"  # "utf-8", "latin-1", "utf-16-le", "utf-16-be"
    errors: str = "strict"  # "surrogateescape": UTF-8 with stray bytes, kept byte for byte
    bom: bytes = b""
    newline: str = "\n"  # the file's dominant line ending: "\n" or "\r\n"

    def encode(self, text: str, shown: str) -> bytes:
        try:
            return self.bom + text.encode(self.encoding, self.errors)
        except UnicodeEncodeError as e:
            bad = text[e.start : e.end]
            raise ToolError(
                f"{shown} is stored as {self.describe()}, which cannot hold {bad!r}; nothing was "
                "changed. Use characters the file's encoding has (or convert the file first)."
            ) from None

    def with_newlines(self, text: str) -> str:
        """`text` with the file's line ending (for what the model wrote with `\\n`)."""
        if self.newline == "\n":
            return text
        return text.replace("\r\n", "\n").replace("\n", self.newline)

    def describe(self) -> str:
        name = {"latin-1": "Latin-1 (ISO-8859-1)"}.get(self.encoding, self.encoding.upper())
        extras = [
            "with a BOM" if self.bom else "",
            "with undecodable bytes kept as they are" if self.errors != "strict" else "",
            "CRLF line endings" if self.newline == "\r\n" else "",
        ]
        return " ".join([name, *[e for e in extras if e]])


def decode(data: bytes, shown: str) -> tuple[str, TextFormat]:
    """The text of a file and how to write it back. UTF-8 (with or without BOM), UTF-16 with a
    BOM, UTF-8 with a few stray bytes (kept exactly), else Latin-1 (every byte a character)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(encoding)
            except UnicodeDecodeError:
                break
            return text, TextFormat(encoding, "strict", bom, _newline(text))
    if b"\0" in data[:8192]:
        raise ToolError(f"{shown} looks binary (NUL bytes): this tool reads text files only")
    try:
        text = data.decode("utf-8")
        return text, TextFormat("utf-8", "strict", b"", _newline(text))
    except UnicodeDecodeError:
        pass
    escaped = data.decode("utf-8", "surrogateescape")
    stray = sum(1 for c in escaped if "\udc80" <= c <= "\udcff")
    valid = sum(1 for c in escaped if ord(c) > 0x7F and not "\udc80" <= c <= "\udcff")
    if valid >= stray:  # mostly UTF-8: keep the few stray bytes as they are
        return escaped, TextFormat("utf-8", "surrogateescape", b"", _newline(escaped))
    text = data.decode("latin-1")
    return text, TextFormat("latin-1", "strict", b"", _newline(text))


def _newline(text: str) -> str:
    crlf = text.count("\r\n")
    return "\r\n" if crlf and crlf >= text.count("\n") - crlf else "\n"


def shown_text(text: str) -> str:
    """For the model's eyes: stray bytes as U+FFFD (a lone surrogate cannot be sent as UTF-8)."""
    if not any("\udc80" <= c <= "\udcff" for c in text):
        return text
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _parent_fd(root: Path, path: Path, *, make_parents: bool) -> tuple[int, str]:
    """An fd of `path`'s folder reached from `root` one component at a time, never following a
    symlink (O_NOFOLLOW on each), and the leaf's name."""
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise ToolError(f"{path} is outside {root}") from None
    if not parts or any(p in ("..", ".") for p in parts):
        raise ToolError(f"{path}: not a file path beneath {root}")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not make_parents:
                    raise
                os.mkdir(part, 0o777, dir_fd=fd)  # the umask applies
                child = os.open(part, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as e:
        os.close(fd)
        if isinstance(e, FileNotFoundError):
            raise
        raise ToolError(
            f"{path}: a folder on the way is not a plain folder any more ({e.strerror}); a "
            "symlink may have been swapped in. Nothing was read or written."
        ) from None
    return fd, parts[-1]


def read_beneath(root: Path, path: Path, shown: str, max_bytes: int) -> bytes:
    """The bytes of a regular file beneath `root`, reached without following symlinks."""
    try:
        folder, name = _parent_fd(root, path, make_parents=False)
    except FileNotFoundError:
        raise ToolError(f"{shown} does not exist") from None
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=folder)
        except FileNotFoundError:
            raise ToolError(f"{shown} does not exist") from None
        except OSError as e:
            raise ToolError(f"{shown}: cannot open ({e.strerror})") from None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ToolError(f"{shown} is a directory (use Glob to list files)")
        if not stat.S_ISREG(info.st_mode):
            raise ToolError(f"{shown} is not a regular file")
        if info.st_size > max_bytes:
            raise ToolError(
                f"{shown} is {info.st_size >> 20} MiB: too large to read "
                f"(limit {max_bytes >> 20} MiB)"
            )
        return file.read(max_bytes + 1)


def head_beneath(root: Path, path: Path, size: int) -> bytes | None:
    """The first `size` bytes of an existing regular file (None when there is none)."""
    try:
        folder, name = _parent_fd(root, path, make_parents=False)
    except FileNotFoundError:
        return None
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder
        )
    except OSError:
        return None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as file:
        return file.read(size) if stat.S_ISREG(os.fstat(fd).st_mode) else None


def write_beneath(root: Path, path: Path, data: bytes, shown: str) -> bool:
    """Replace (or create) the file atomically: a temp file in the same folder, reached without
    following symlinks, renamed over the target. An existing file keeps its mode and owner, and
    a read-only one is refused; a new file follows the umask. Returns whether it existed."""
    folder, name = _parent_fd(root, path, make_parents=True)
    try:
        try:
            old = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None:
            if stat.S_ISLNK(old.st_mode):
                raise ToolError(
                    f"{shown} became a symlink meanwhile; nothing was written (a process may "
                    "be racing the edit)"
                )
            if stat.S_ISDIR(old.st_mode):
                raise ToolError(f"{shown} is a directory")
            if not stat.S_ISREG(old.st_mode):
                raise ToolError(f"{shown} is not a regular file; not written")
            writable = old.st_mode & 0o222 and os.access(name, os.W_OK, dir_fd=folder)
            if not writable:
                raise ToolError(
                    f"{shown} is read-only (mode {stat.S_IMODE(old.st_mode):04o}); it was not "
                    "changed. If it should change, make it writable first (e.g. chmod u+w)."
                )
        temp = f".{name}.{secrets.token_hex(4)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600 if old else 0o666, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                if old is not None:
                    os.fchmod(fd, stat.S_IMODE(old.st_mode))
                    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                        os.fchown(fd, old.st_uid, old.st_gid)
            os.rename(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
        except PermissionError:
            # Not ours and we may not give it its owner back: rewrite it in place instead.
            os.unlink(temp, dir_fd=folder)
            fd = os.open(name, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW, dir_fd=folder)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=folder)
            raise
        return old is not None
    finally:
        os.close(folder)
