"""Findings 5 and 11-13 of issue 13: Write/Edit/Read redirected by a swapped symlink, and edits
that corrupt files (encoding, BOM, line endings, mode, owner, umask, size). The file tools run
in the agent process, not in the sandbox: the same on both backends."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import NOBODY

from m2agent.tools import ToolRegistry, Workspace
from m2agent.tools.base import ToolError
from m2agent.tools.files import EditTool, ReadTool, WriteTool
from m2agent.tools.textfile import read_beneath, write_beneath


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "ws"
    folder.mkdir()
    return folder


@pytest.fixture
def tools(root: Path) -> ToolRegistry:
    ws = Workspace(root)
    return ToolRegistry([ReadTool(ws), WriteTool(ws), EditTool(ws)])


def edit(tools: ToolRegistry, path: str, old: str, new: str) -> str:
    result = tools.call("Edit", {"file_path": path, "old_string": old, "new_string": new})
    assert not result.is_error, result.content
    return result.content


# Finding 5: a symlink swapped in while the tools work.
def test_writes_never_follow_a_symlink_swapped_in(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").mkdir()
    (root / "sub/f.txt").write_text("a\n")
    with pytest.raises(ToolError, match="symlink"):  # deterministic: swapped after resolving
        (root / "sub/f.txt").unlink()
        (root / "sub").rmdir()
        (root / "sub").symlink_to(outside)
        write_beneath(root, root / "sub/f.txt", b"pwned\n", "sub/f.txt")
    (root / "sub").unlink()
    (root / "sub").mkdir()
    (root / "link.txt").symlink_to(outside / "target.txt")
    with pytest.raises(ToolError, match="symlink"):
        write_beneath(root, root / "link.txt", b"pwned\n", "link.txt")
    with pytest.raises(ToolError):
        read_beneath(root, root / "link.txt", "link.txt", 1 << 20)
    assert list(outside.iterdir()) == []


def test_a_symlink_swapped_in_after_the_check_is_not_followed(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race made deterministic: the folder becomes a symlink right after the tool checked
    the path (what a background process can do at any moment)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sub").mkdir()
    (root / "sub/f.txt").write_text("x = 1\n")
    ws = Workspace(root)
    checked = Workspace.resolve_write

    def check_then_swap(self: Workspace, file_path: str) -> Path:
        path = checked(self, file_path)
        if (root / "sub").is_dir() and not (root / "sub").is_symlink():
            (root / "sub/f.txt").rename(outside / "f.txt")
            (root / "sub").rmdir()
            (root / "sub").symlink_to(outside)
        return path

    monkeypatch.setattr(Workspace, "resolve_write", check_then_swap)
    tools = ToolRegistry([WriteTool(ws), EditTool(ws)])
    wrote = tools.call("Write", {"file_path": "sub/f.txt", "content": "pwned\n"})
    assert wrote.is_error and "symlink" in wrote.content
    assert (outside / "f.txt").read_text() == "x = 1\n", "Write went through the symlink"
    (root / "sub").unlink()
    (root / "sub").mkdir()
    (outside / "f.txt").rename(root / "sub/f.txt")
    edited = tools.call("Edit", {"file_path": "sub/f.txt", "old_string": "x", "new_string": "y"})
    assert edited.is_error
    assert (outside / "f.txt").read_text() == "x = 1\n", "Edit went through the symlink"


@pytest.fixture
def swapper(root: Path, tmp_path: Path) -> Iterator[Path]:
    """A background process's worth of racing: `sub` flips between a folder and a symlink to
    a folder outside, as fast as it can."""
    outside = tmp_path / "outside"
    outside.mkdir()
    real = root / "real"
    real.mkdir()
    (real / "f.txt").write_text("x = 1\n")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            link = root / "sub"
            try:
                link.symlink_to(real)
                link.unlink()
                link.symlink_to(outside)
                link.unlink()
            except OSError:
                continue

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    try:
        yield outside
    finally:
        stop.set()
        thread.join()


def test_racing_symlink_swaps_never_redirect_write_or_edit(
    tools: ToolRegistry, swapper: Path
) -> None:
    for i in range(300):
        tools.call("Write", {"file_path": "sub/f.txt", "content": f"x = {i}\n"})
        tools.call("Edit", {"file_path": "sub/f.txt", "old_string": "x =", "new_string": "y ="})
    assert list(swapper.iterdir()) == [], "a write went through the swapped symlink"


# Finding 11: encodings, BOM, trailing newline.
def test_latin1_edit_changes_only_the_replaced_bytes(tools: ToolRegistry, root: Path) -> None:
    (root / "old.py").write_bytes(b"name = 'caf\xe9'\nx = 2\n")
    edit(tools, "old.py", "x = 2", "x = 3")
    assert (root / "old.py").read_bytes() == b"name = 'caf\xe9'\nx = 3\n"
    edit(tools, "old.py", "x = 3", "y = 'd\xe9j\xe0'")
    assert (root / "old.py").read_bytes() == b"name = 'caf\xe9'\ny = 'd\xe9j\xe0'\n"
    refused = tools.call("Edit", {"file_path": "old.py", "old_string": "y", "new_string": "\u0142"})
    assert refused.is_error and "Latin-1" in refused.content
    assert (root / "old.py").read_bytes() == b"name = 'caf\xe9'\ny = 'd\xe9j\xe0'\n"
    shown = tools.call("Read", {"file_path": "old.py"}).content
    assert "caf\xe9" in shown


def test_stray_byte_in_utf8_is_kept_and_nothing_is_double_encoded(
    tools: ToolRegistry, root: Path
) -> None:
    original = "naïve = '日本'\n".encode() + b"bad = '\xff'\nx = 2\n"
    (root / "mixed.py").write_bytes(original)
    edit(tools, "mixed.py", "x = 2", "x = 'ü'")
    assert (root / "mixed.py").read_bytes() == original.replace(b"x = 2", "x = 'ü'".encode())
    assert "\ufffd" in tools.call("Read", {"file_path": "mixed.py"}).content


@pytest.mark.parametrize(
    "bom, encoding", [(b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le")], ids=["utf8", "utf16"]
)
def test_bom_encoding_and_missing_final_newline_are_kept(
    tools: ToolRegistry, root: Path, bom: bytes, encoding: str
) -> None:
    (root / "b.txt").write_bytes(bom + "first\nlast line, no newline".encode(encoding))
    edit(tools, "b.txt", "first", "premier")
    assert (root / "b.txt").read_bytes() == bom + "premier\nlast line, no newline".encode(encoding)
    tools.call("Write", {"file_path": "b.txt", "content": "all new"})
    assert (root / "b.txt").read_bytes() == bom + b"all new".decode().encode(encoding)


# Finding 12: CRLF.
def test_crlf_files_keep_their_line_endings(tools: ToolRegistry, root: Path) -> None:
    (root / "w.bat").write_bytes(b"@echo off\r\necho one\r\necho two\r\n")
    shown = tools.call("Read", {"file_path": "w.bat"}).content
    copied = "\n".join(line.split("\t", 1)[1] for line in shown.splitlines()[1:3])
    edit(tools, "w.bat", copied, "echo 1\necho 2\necho 3")
    assert (root / "w.bat").read_bytes() == b"@echo off\r\necho 1\r\necho 2\r\necho 3\r\n"
    edit(tools, "w.bat", "echo 3", "echo 3\necho 4")
    assert b"echo 3\r\necho 4\r\n" in (root / "w.bat").read_bytes()
    tools.call("Write", {"file_path": "w.bat", "content": "@echo off\necho new\n"})
    assert (root / "w.bat").read_bytes() == b"@echo off\r\necho new\r\n"


# Finding 13: read-only files, owner, umask, size.
def test_read_only_files_are_refused(tools: ToolRegistry, root: Path) -> None:
    locked = root / "locked.txt"
    locked.write_text("keep\n")
    locked.chmod(0o444)
    for name, args in (
        ("Write", {"file_path": "locked.txt", "content": "new\n"}),
        ("Edit", {"file_path": "locked.txt", "old_string": "keep", "new_string": "lost"}),
    ):
        result = tools.call(name, args)
        assert result.is_error and "read-only (mode 0444)" in result.content
    assert locked.read_text() == "keep\n" and locked.stat().st_mode & 0o777 == 0o444


def test_edit_keeps_owner_and_new_files_follow_the_umask(tools: ToolRegistry, root: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("keeping another user's ownership needs root")
    theirs = root / "theirs.py"
    theirs.write_text("x = 1\n")
    os.chown(theirs, NOBODY, NOBODY)
    theirs.chmod(0o640)
    edit(tools, "theirs.py", "x = 1", "x = 2")
    info = theirs.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (NOBODY, NOBODY, 0o640)
    previous = os.umask(0o002)
    try:
        tools.call("Write", {"file_path": "pkg/new.py", "content": "y = 1\n"})
    finally:
        os.umask(previous)
    assert (root / "pkg/new.py").stat().st_mode & 0o777 == 0o664
    assert (root / "pkg").stat().st_mode & 0o777 == 0o775


def test_write_replaces_a_file_over_10_mib(tools: ToolRegistry, root: Path) -> None:
    (root / "big.log").write_bytes(b"line\n" * (3 << 20))  # 15 MiB
    result = tools.call("Write", {"file_path": "big.log", "content": "short\n"})
    assert not result.is_error, result.content
    assert (root / "big.log").read_bytes() == b"short\n"


@pytest.mark.parametrize("ripgrep", ["auto", None], ids=["ripgrep", "python"])
def test_grep_does_not_follow_symlinks_out(root: Path, tmp_path: Path, ripgrep: str | None) -> None:
    from m2agent.tools.search import GrepTool

    secret = tmp_path / "id_ed25519"
    secret.write_text("PRIVATE-KEY-5d1\n")
    (root / "notes.txt").write_text("nothing here\n")
    (root / "leak.txt").symlink_to(secret)
    tools = ToolRegistry([GrepTool(Workspace(root), ripgrep=ripgrep)])
    result = tools.call("Grep", {"pattern": "PRIVATE", "output_mode": "content"})
    assert "5d1" not in result.content and "leak" not in result.content


@pytest.mark.parametrize("ripgrep", ["auto", None], ids=["ripgrep", "python"])
def test_tools_do_not_read_hidden_files_either(root: Path, ripgrep: str | None) -> None:
    from m2agent.tools.search import GrepTool

    (root / "secrets.env").write_text("DB_PASSWORD=hunter2-7a3\n")
    (root / "app.py").write_text("PASSWORD = os.environ['DB_PASSWORD']\n")
    ws = Workspace(root, hidden=[root / "secrets.env"])
    tools = ToolRegistry([ReadTool(ws), EditTool(ws), WriteTool(ws), GrepTool(ws, ripgrep=ripgrep)])
    for name, args in (
        ("Read", {"file_path": "secrets.env"}),
        ("Edit", {"file_path": "secrets.env", "old_string": "DB", "new_string": "X"}),
        ("Write", {"file_path": "secrets.env", "content": ""}),
    ):
        result = tools.call(name, args)
        assert result.is_error and "hidden" in result.content and "7a3" not in result.content
    found = tools.call("Grep", {"pattern": "PASSWORD", "output_mode": "content"}).content
    assert "app.py" in found and "7a3" not in found
    assert (root / "secrets.env").read_text() == "DB_PASSWORD=hunter2-7a3\n"
