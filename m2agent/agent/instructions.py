"""Instructions the user and the repository give the agent, as Claude Code and Codex read them:
the user's own `AGENTS.md` / `CLAUDE.md` (in m2agent's config folder), then every `AGENTS.md`
and `CLAUDE.md` from the repository root down to the working directory (closer files last, so
they take precedence), each followed by the files it imports with `@path` (relative to the
importing file, up to 5 levels deep, each file once).

A repository's files may import only files inside the repository: `@~/.ssh/id_rsa` in a cloned
project must not send your key to the model. The user's own files may import anything.
Reads files; runs nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

NAMES = ("AGENTS.md", "CLAUDE.md")
MAX_DEPTH = 5
MAX_FILE_CHARS = 20_000
MAX_TOTAL_CHARS = 60_000
# `@path` at a word boundary, not in an e-mail address; a path has a slash or an extension.
_IMPORT = re.compile(r"(?<![\w@`])@((?:~/|\.{1,2}/|/)?[\w.\-/]*[\w\-](?:/|\.[A-Za-z0-9]+))")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"`[^`]*`")


@dataclass(frozen=True, slots=True)
class Instructions:
    path: Path
    text: str
    imported_by: Path | None = None  # None: found by name, not imported


def find_root(cwd: Path) -> Path:
    """The repository root above `cwd` (a folder holding `.git`), or `cwd` itself."""
    cwd = cwd.resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / ".git").exists():
            return folder
    return cwd


def collect(cwd: Path, user_dir: Path | None, home: Path | None = None) -> list[Instructions]:
    """Every instruction file that applies in `cwd`, in the order the model should read them."""
    cwd = cwd.resolve()
    root = find_root(cwd)
    found: list[Instructions] = []
    seen: set[Path] = set()
    if user_dir is not None:
        for name in NAMES:
            _add(user_dir / name, None, None, home, found, seen, 0)
    folders = [root, *reversed([p for p in cwd.parents if p.is_relative_to(root) and p != root])]
    if cwd != root:
        folders.append(cwd)
    for folder in folders:
        for name in NAMES:
            _add(folder / name, None, root, home, found, seen, 0)
    total, kept = 0, []
    for item in found:
        if total + len(item.text) > MAX_TOTAL_CHARS:
            break
        total += len(item.text)
        kept.append(item)
    return kept


def render(items: list[Instructions]) -> str:
    """The instructions as a prompt section ("" when there are none)."""
    parts = []
    for item in items:
        origin = f" (imported by {item.imported_by})" if item.imported_by else ""
        parts += [f"Instructions from {item.path}{origin}:", item.text.rstrip(), ""]
    return "\n".join(parts).rstrip()


def imports(text: str) -> list[str]:
    """The `@path` references of a text, outside code blocks and code spans."""
    found: list[str] = []
    in_fence = False
    for line in text.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for match in _IMPORT.finditer(_CODE_SPAN.sub("", line)):
            if match.group(1) not in found:
                found.append(match.group(1))
    return found


def _add(
    path: Path,
    imported_by: Path | None,
    root: Path | None,  # None: a user file, which may import anything
    home: Path | None,
    found: list[Instructions],
    seen: set[Path],
    depth: int,
) -> None:
    try:
        resolved = path.resolve()
        if resolved in seen or not resolved.is_file():
            return
        if root is not None and not resolved.is_relative_to(root):
            return
        text = resolved.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    seen.add(resolved)
    if len(text) > MAX_FILE_CHARS:
        text = text[:MAX_FILE_CHARS] + f"\n[... cut at {MAX_FILE_CHARS} characters]"
    found.append(Instructions(path, text, imported_by))
    if depth >= MAX_DEPTH:
        return
    for reference in imports(text):
        if reference.startswith("~/"):
            if home is None or root is not None:
                continue  # a repository's file may not reach into the home folder
            target = home / reference[2:]
        else:
            target = resolved.parent / reference
        _add(target, path, root, home, found, seen, depth + 1)
