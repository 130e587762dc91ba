"""Grep (ripgrep when installed, a Python fallback otherwise; both respect .gitignore) and Glob
(file paths by pattern, newest first). Results are capped and say so."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from m2agent.tools.base import Description, ToolAnnotations, ToolError, ToolResult
from m2agent.tools.workspace import Workspace

MAX_RESULTS = 250
TIMEOUT_S = 30


class GrepArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    pattern: str = Field(description="Regular expression to search for (Rust/Python regex syntax).")
    path: str | None = Field(
        default=None, description="File or folder to search (default: workspace)."
    )
    glob: str | None = Field(
        default=None, description='Only files matching this glob, e.g. "*.py".'
    )
    output_mode: Literal["content", "files_with_matches", "count"] = Field(
        default="files_with_matches",
        description="content: matching lines with line numbers; files_with_matches: paths; "
        "count: matches per file.",
    )
    case_insensitive: bool = Field(default=False, alias="-i", description="Ignore case.")
    context: int | None = Field(
        default=None, ge=0, le=20, description="Lines of context around each match (content mode)."
    )
    head_limit: int = Field(
        default=MAX_RESULTS, ge=1, le=5000, description="At most this many lines."
    )


class GlobArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(description='Glob like "**/*.py" or "src/**/test_*.ts".')
    path: str | None = Field(default=None, description="Folder to search in (default: workspace).")


class GrepTool:
    name: ClassVar[str] = "Grep"
    description: ClassVar[str] = (
        "Search file contents with a regular expression (ripgrep). Respects .gitignore. Use "
        "output_mode=content with context for the matching lines."
    )
    Args: ClassVar[type[BaseModel]] = GrepArgs
    annotations: ClassVar[ToolAnnotations] = ToolAnnotations(read_only=True, destructive=False)

    def __init__(self, workspace: Workspace, ripgrep: str | None = "auto") -> None:
        self.workspace = workspace
        # Only a system ripgrep: never one that a repository could plant in the workspace.
        found = shutil.which("rg") if ripgrep == "auto" else ripgrep
        self.ripgrep = (
            found if found and not Path(found).resolve().is_relative_to(workspace.path) else None
        )

    def describe(self, args: GrepArgs) -> Description:
        return Description(f"{args.pattern}" + (f" in {args.path}" if args.path else ""))

    def run(self, args: GrepArgs) -> ToolResult:
        try:
            regex = re.compile(args.pattern, re.IGNORECASE if args.case_insensitive else 0)
        except re.error as e:
            raise ToolError(f"invalid regular expression {args.pattern!r}: {e}") from None
        target = self.workspace.resolve_read(args.path or ".")
        lines = self._ripgrep(args, target) if self.ripgrep else self._python(args, regex, target)
        if not lines:
            return ToolResult(f"No matches for {args.pattern!r}")
        shown = lines[: args.head_limit]
        if len(lines) > len(shown):
            shown.append(f"[... {len(lines) - len(shown)} more lines: narrow the search]")
        return ToolResult("\n".join(shown))

    def _ripgrep(self, args: GrepArgs, target: Path) -> list[str]:
        assert self.ripgrep is not None
        argv = [self.ripgrep, "--no-config", "--color=never", "--no-messages"]
        if args.case_insensitive:
            argv.append("-i")
        if args.output_mode == "files_with_matches":
            argv.append("-l")
        elif args.output_mode == "count":
            argv.append("-c")
        else:
            argv += ["-n", "--no-heading", "--with-filename"]
            if args.context:
                argv += ["-C", str(args.context)]
        if args.glob:
            argv += ["--glob", args.glob]
        argv += ["-e", args.pattern, "--", str(target)]
        try:
            done = subprocess.run(
                argv, cwd=self.workspace.path, capture_output=True, text=True, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise ToolError(f"search timed out after {TIMEOUT_S}s: narrow path or glob") from None
        if done.returncode not in (0, 1):
            raise ToolError(f"ripgrep failed: {done.stderr.strip()[:500]}")
        prefix = str(self.workspace.path) + os.sep
        return [line.removeprefix(prefix) for line in done.stdout.splitlines()]

    def _python(self, args: GrepArgs, regex: re.Pattern[str], target: Path) -> list[str]:
        out: list[str] = []
        for file in candidate_files(self.workspace, target, args.glob):
            try:
                text = file.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            rel = self.workspace.relative(file)
            lines = text.splitlines()
            hits = [n for n, line in enumerate(lines) if regex.search(line)]
            if not hits:
                continue
            if args.output_mode == "files_with_matches":
                out.append(rel)
            elif args.output_mode == "count":
                out.append(f"{rel}:{len(hits)}")
            else:
                ctx = args.context or 0
                shown: set[int] = set()
                for n in hits:
                    for m in range(max(0, n - ctx), min(len(lines), n + ctx + 1)):
                        if m not in shown:
                            shown.add(m)
                            sep = ":" if m == n or m in hits else "-"
                            out.append(f"{rel}{sep}{m + 1}{sep}{lines[m]}")
            if len(out) > 5000:
                break
        return out


class GlobTool:
    name: ClassVar[str] = "Glob"
    description: ClassVar[str] = (
        'Find files by glob pattern ("**/*.py"). Returns paths, most recently modified first. '
        "Respects .gitignore."
    )
    Args: ClassVar[type[BaseModel]] = GlobArgs
    annotations: ClassVar[ToolAnnotations] = ToolAnnotations(read_only=True, destructive=False)

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def describe(self, args: GlobArgs) -> Description:
        return Description(f"{args.pattern}" + (f" in {args.path}" if args.path else ""))

    def run(self, args: GlobArgs) -> ToolResult:
        base = self.workspace.resolve_read(args.path or ".")
        if not base.is_dir():
            raise ToolError(f"{args.path} is not a folder")
        pattern = args.pattern.removeprefix("./")
        matches = [
            f
            for f in candidate_files(self.workspace, base, None)
            if _glob_match(str(f.relative_to(base)), pattern)
        ]
        if not matches:
            return ToolResult(f"No files match {args.pattern!r}")
        matches.sort(key=lambda f: f.stat().st_mtime, reverse=True)
        shown = [self.workspace.relative(f) for f in matches[:MAX_RESULTS]]
        if len(matches) > MAX_RESULTS:
            shown.append(f"[... {len(matches) - MAX_RESULTS} more files: narrow the pattern]")
        return ToolResult("\n".join(shown))


def _glob_match(relative: str, pattern: str) -> bool:
    """fnmatch on the relative path; `**/` also matches zero folders ("**/*.py" matches
    "a.py"); a pattern without "/" matches the file name in any folder."""
    if fnmatch.fnmatch(relative, pattern):
        return True
    if pattern.startswith("**/") and fnmatch.fnmatch(relative, pattern[3:]):
        return True
    return "/" not in pattern and fnmatch.fnmatch(relative.rsplit("/", 1)[-1], pattern)


def candidate_files(workspace: Workspace, target: Path, glob: str | None) -> list[Path]:
    """Files under target that git would not ignore (all files outside a git repository,
    skipping VCS and dependency folders)."""
    if target.is_file():
        return [target]
    files = _git_files(target)
    if files is None:
        files = []
        for folder, dirs, names in os.walk(target):
            dirs[:] = [
                d
                for d in dirs
                if d not in (".git", ".hg", ".svn", "node_modules", "__pycache__", ".venv")
            ]
            files += [Path(folder) / n for n in names]
    if glob:
        files = [
            f
            for f in files
            if fnmatch.fnmatch(f.name, glob) or fnmatch.fnmatch(str(f.relative_to(target)), glob)
        ]
    return sorted(f for f in files if f.is_file())


def _git_files(target: Path) -> list[Path] | None:
    try:
        done = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=target, capture_output=True, timeout=TIMEOUT_S,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return [target / name for name in done.stdout.decode("utf-8", "replace").split("\0") if name]
