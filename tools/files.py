"""Read, Write and Edit: the file tools, in Claude Code's vocabulary. Writes are atomic
(temp file + rename) and confined to the workspace; Edit replaces one exact match and shows
the diff, or explains why it could not (with the nearest candidates)."""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from m2agent.tools.base import Description, ToolAnnotations, ToolError, ToolResult
from m2agent.tools.workspace import Workspace

MAX_LINES = 2000
MAX_LINE_CHARS = 2000
MAX_FILE_BYTES = 10 << 20
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".ico", ".tiff", ".pdf"}


class ReadArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_path: str = Field(description="Path of the file to read (absolute or workspace-relative).")
    offset: int | None = Field(
        default=None, ge=1, description="Line number to start from (1-based). Use for long files."
    )
    limit: int | None = Field(
        default=None, ge=1, description=f"Number of lines to read (default {MAX_LINES})."
    )


class WriteArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_path: str = Field(description="Path of the file to create or overwrite.")
    content: str = Field(description="The complete new content of the file.")


class EditArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_path: str = Field(description="Path of the file to edit.")
    old_string: str = Field(
        description="Exact text to replace, including whitespace and indentation. It must occur "
        "exactly once unless replace_all is true: include enough context to make it unique."
    )
    new_string: str = Field(description="The replacement text (must differ from old_string).")
    replace_all: bool = Field(default=False, description="Replace every occurrence.")


class ReadTool:
    name: ClassVar[str] = "Read"
    description: ClassVar[str] = (
        "Read a text file. Returns numbered lines (`   12\\tcode`); use offset/limit for long "
        "files. Images and binary files are refused."
    )
    Args: ClassVar[type[BaseModel]] = ReadArgs
    annotations: ClassVar[ToolAnnotations] = ToolAnnotations(read_only=True, destructive=False)

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def describe(self, args: ReadArgs) -> Description:
        where = f" (from line {args.offset})" if args.offset else ""
        return Description(f"{args.file_path}{where}")

    def run(self, args: ReadArgs) -> ToolResult:
        path = self.workspace.resolve_read(args.file_path)
        text = read_text(path, args.file_path)
        lines = text.splitlines()
        start = (args.offset or 1) - 1
        limit = args.limit or MAX_LINES
        if start >= max(len(lines), 1) and lines:
            raise ToolError(
                f"{args.file_path} has {len(lines)} lines; offset {start + 1} is past the end"
            )
        shown = lines[start : start + limit]
        out = []
        for number, line in enumerate(shown, start=start + 1):
            if len(line) > MAX_LINE_CHARS:
                line = line[:MAX_LINE_CHARS] + f" [... line truncated: {len(line)} characters]"
            out.append(f"{number:>6}\t{line}")
        if not lines:
            out.append("(the file is empty)")
        rest = len(lines) - (start + len(shown))
        if rest > 0:
            out.append(f"[... {rest} more lines: read on with offset={start + len(shown) + 1}]")
        return ToolResult("\n".join(out), metadata={"path": str(path), "lines": len(shown)})


class WriteTool:
    name: ClassVar[str] = "Write"
    description: ClassVar[str] = (
        "Create a file or overwrite it with new content (parent folders are created). Prefer "
        "Edit for changes to an existing file."
    )
    Args: ClassVar[type[BaseModel]] = WriteArgs
    annotations: ClassVar[ToolAnnotations] = ToolAnnotations(read_only=False, destructive=True)

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def describe(self, args: WriteArgs) -> Description:
        try:
            path, old, existed = self._current(args)
        except ToolError as e:
            return Description(args.file_path, f"(will fail: {e})")
        rel = self.workspace.relative(path)
        diff = unified_diff(old, args.content, rel) if existed else _new_file(args.content, rel)
        return Description(args.file_path, diff or "(no change)")

    def _current(self, args: WriteArgs) -> tuple[Path, str, bool]:
        path = self.workspace.resolve_write(args.file_path)
        if path.is_dir():
            raise ToolError(f"{args.file_path} is a directory")
        existed = path.exists()
        return path, read_text(path, args.file_path) if existed else "", existed

    def run(self, args: WriteArgs) -> ToolResult:
        path, old, existed = self._current(args)
        atomic_write(path, args.content)
        rel = self.workspace.relative(path)
        verb = "Updated" if existed else "Created"
        lines = args.content.count("\n") + (
            0 if args.content.endswith("\n") or not args.content else 1
        )
        return ToolResult(
            f"{verb} {rel} ({lines} lines)",
            metadata={"path": str(path), "diff": unified_diff(old, args.content, rel)},
        )


class EditTool:
    name: ClassVar[str] = "Edit"
    description: ClassVar[str] = (
        "Replace an exact string in a file. old_string must match exactly once (or set "
        "replace_all). Returns the diff; on no or several matches, shows where to look."
    )
    Args: ClassVar[type[BaseModel]] = EditArgs
    annotations: ClassVar[ToolAnnotations] = ToolAnnotations(read_only=False, destructive=True)

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def describe(self, args: EditArgs) -> Description:
        try:
            path, text, new, _ = self._plan(args)
        except ToolError as e:
            return Description(args.file_path, f"(will fail: {e})")
        return Description(args.file_path, unified_diff(text, new, self.workspace.relative(path)))

    def run(self, args: EditArgs) -> ToolResult:
        path, text, new, count = self._plan(args)
        atomic_write(path, new)
        rel = self.workspace.relative(path)
        diff = unified_diff(text, new, rel)
        done = f"replaced {count} occurrences" if count > 1 else "edited"
        return ToolResult(f"{rel}: {done}\n{diff}", metadata={"path": str(path), "diff": diff})

    def _plan(self, args: EditArgs) -> tuple[Path, str, str, int]:
        """(path, current text, text after the edit, matches); ToolError when it cannot apply."""
        path = self.workspace.resolve_write(args.file_path)
        if not path.is_file():
            raise ToolError(f"{args.file_path} does not exist (use Write to create it)")
        if args.old_string == "":
            raise ToolError("old_string is empty; use Write to replace a whole file")
        if args.old_string == args.new_string:
            raise ToolError("old_string and new_string are identical: nothing to change")
        text = read_text(path, args.file_path)
        count = text.count(args.old_string)
        if count == 0:
            raise ToolError(no_match_message(text, args.old_string, args.file_path))
        if count > 1 and not args.replace_all:
            where = ", ".join(str(n) for n in match_lines(text, args.old_string)[:10])
            raise ToolError(
                f"old_string occurs {count} times in {args.file_path} (lines {where}); add "
                "surrounding context to make it unique, or set replace_all"
            )
        return path, text, text.replace(args.old_string, args.new_string), count


def read_text(path: Path, shown: str) -> str:
    if not path.exists():
        raise ToolError(f"{shown} does not exist")
    if path.is_dir():
        raise ToolError(f"{shown} is a directory (use Glob to list files)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        raise ToolError(f"{shown} is an image or PDF: this tool reads text files only")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ToolError(
            f"{shown} is {size >> 20} MiB: too large to read (limit {MAX_FILE_BYTES >> 20} MiB)"
        )
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        raise ToolError(f"{shown} looks binary (NUL bytes): this tool reads text files only")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def atomic_write(path: Path, content: str) -> None:
    """Write via a temp file in the same folder and rename over the target (keeps its mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(content)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unified_diff(old: str, new: str, name: str, context: int = 2) -> str:
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        f"a/{name}",
        f"b/{name}",
        n=context,
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def _new_file(content: str, name: str) -> str:
    return unified_diff("", content, name).replace(f"--- a/{name}", "--- /dev/null", 1)


def match_lines(text: str, needle: str) -> list[int]:
    lines, start = [], 0
    while (index := text.find(needle, start)) >= 0:
        lines.append(text.count("\n", 0, index) + 1)
        start = index + 1
    return lines


def no_match_message(text: str, old: str, shown: str) -> str:
    """Why old_string was not found, with the lines that come closest."""
    lines = text.splitlines()
    first = next((line for line in old.splitlines() if line.strip()), old)
    scored = sorted(
        (
            (difflib.SequenceMatcher(None, first.strip(), line.strip()).ratio(), n)
            for n, line in enumerate(lines, 1)
        ),
        reverse=True,
    )
    near = [(score, n) for score, n in scored[:3] if score > 0.5]
    hint = ""
    if old.strip() and old.strip() in text:
        hint = " (it would match ignoring leading/trailing whitespace: check indentation)"
    message = f"old_string was not found in {shown}{hint}."
    if near:
        message += " Closest lines:\n" + "\n".join(f"{n:>6}\t{lines[n - 1]}" for _, n in near)
    return message
