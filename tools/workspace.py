"""The workspace: where tools may read and write. Paths resolve inside it; `..`, absolute paths
and symlinks that lead out are refused for writes (reads outside need an explicit allowance);
`.git` and the agent's own state are protected from tools."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from m2agent.tools.base import ToolError

PROTECTED_NAMES = (".git", ".m2agent")


class Workspace:
    __slots__ = ("_root", "extra_read_roots", "hidden", "protected")

    def __init__(
        self,
        root: str | Path,
        extra_read_roots: Sequence[str | Path] = (),
        protected: Sequence[str] = PROTECTED_NAMES,
        hidden: Sequence[str | Path] = (),
    ) -> None:
        """`hidden`: secrets the tools must not read either (the sandbox policy's `hidden`:
        the built-in secret paths and the user's `deny_read`)."""
        resolved = Path(root).resolve()
        if not resolved.is_dir():
            raise ValueError(f"workspace {root} is not a directory")
        self._root = resolved
        self.extra_read_roots = tuple(Path(p).resolve() for p in extra_read_roots)
        self.protected = tuple(protected)
        self.hidden = tuple(Path(os.path.realpath(p)) for p in hidden)

    @property
    def path(self) -> Path:
        return self._root

    def resolve_read(self, file_path: str) -> Path:
        """A path the model may read: inside the workspace or an allowed extra root."""
        path = _resolve(self._absolute(file_path), file_path)
        self.refuse_hidden(path, file_path)
        for root in (self.path, *self.extra_read_roots):
            if path == root or path.is_relative_to(root):
                return path
        raise ToolError(
            f"{file_path}: outside the workspace {self.path}; reading it needs an explicit "
            "allowance from the user"
        )

    def is_hidden(self, path: Path) -> bool:
        return any(path == h or path.is_relative_to(h) for h in self.hidden)

    def refuse_hidden(self, path: Path, shown: str) -> None:
        if self.is_hidden(path):
            raise ToolError(
                f"{shown} is hidden from tools and commands (a secret: built in, or deny_read "
                "in the config); it was not read"
            )

    def root_of(self, path: Path) -> Path:
        """The root (the workspace or an extra read root) that a resolved path lies under."""
        for root in (self.path, *self.extra_read_roots):
            if path == root or path.is_relative_to(root):
                return root
        raise ToolError(f"{path}: outside the workspace {self.path}")

    def resolve_write(self, file_path: str) -> Path:
        """A path the model may write: inside the workspace after following symlinks, and not
        in a protected folder."""
        raw = self._absolute(file_path)
        path = _resolve(raw, file_path)  # follows symlinks, also of missing leaves' parents
        if not (path == self.path or path.is_relative_to(self.path)):
            why = " (through a symlink)" if raw.absolute() != path else ""
            raise ToolError(f"{file_path}: outside the workspace {self.path}{why}; not writable")
        self.refuse_hidden(path, file_path)  # Edit and Write show the old content in their diff
        relative = path.relative_to(self.path)
        if relative.parts and relative.parts[0] in self.protected:
            raise ToolError(f"{file_path}: {relative.parts[0]}/ is protected from tools")
        return path

    def relative(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.path))
        except ValueError:
            return str(path)

    def _absolute(self, file_path: str) -> Path:
        if not file_path or "\0" in file_path:
            raise ToolError("file_path must be a non-empty path")
        path = Path(os.path.expanduser(file_path))
        return path if path.is_absolute() else self.path / path


def _resolve(path: Path, shown: str) -> Path:
    try:
        return path.resolve()
    except OSError as e:  # a symlink loop, or a path changing while it is resolved
        raise ToolError(f"{shown}: cannot resolve the path ({e.strerror or e})") from None
