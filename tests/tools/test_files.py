"""Read, Write, Edit and the workspace rules, on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from m2agent.tools import ToolError, ToolRegistry, Workspace
from m2agent.tools.files import EditTool, ReadTool, WriteTool


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "src").mkdir()
    (root / "src" / "calc.py").write_text(
        "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
    )
    (root / ".git").mkdir()
    return Workspace(root)


@pytest.fixture
def tools(ws: Workspace) -> ToolRegistry:
    return ToolRegistry([ReadTool(ws), WriteTool(ws), EditTool(ws)])


def test_read_numbers_lines_and_pages(tools: ToolRegistry, ws: Workspace) -> None:
    result = tools.call("Read", {"file_path": "src/calc.py"})
    assert not result.is_error
    assert result.content.splitlines()[0] == "     1\tdef add(a, b):"
    page = tools.call("Read", {"file_path": str(ws.path / "src/calc.py"), "offset": 2, "limit": 1})
    assert page.content.splitlines()[0] == "     2\t    return a - b"
    assert "read on with offset=3" in page.content


def test_read_truncates_long_lines_and_refuses_binaries(tools: ToolRegistry, ws: Workspace) -> None:
    (ws.path / "long.txt").write_text("x" * 5000 + "\n")
    assert (
        "line truncated: 5000 characters" in tools.call("Read", {"file_path": "long.txt"}).content
    )
    (ws.path / "blob.bin").write_bytes(b"\x00\x01\x02")
    (ws.path / "pic.png").write_bytes(b"\x89PNG")
    for name in ("blob.bin", "pic.png"):
        result = tools.call("Read", {"file_path": name})
        assert result.is_error and "text files only" in result.content
    missing = tools.call("Read", {"file_path": "nope.py"})
    assert missing.is_error and "does not exist" in missing.content


def test_read_outside_needs_allowance(tmp_path: Path, ws: Workspace) -> None:
    outside = tmp_path / "notes.txt"
    outside.write_text("secret plans\n")
    result = ToolRegistry([ReadTool(ws)]).call("Read", {"file_path": str(outside)})
    assert result.is_error and "outside the workspace" in result.content
    allowed = Workspace(ws.path, extra_read_roots=[tmp_path])
    assert (
        "secret plans"
        in ToolRegistry([ReadTool(allowed)]).call("Read", {"file_path": str(outside)}).content
    )


def test_write_creates_parents_atomically_and_keeps_mode(
    tools: ToolRegistry, ws: Workspace
) -> None:
    result = tools.call("Write", {"file_path": "pkg/deep/new.py", "content": "x = 1\n"})
    assert not result.is_error and "Created pkg/deep/new.py" in result.content
    assert (ws.path / "pkg/deep/new.py").read_text() == "x = 1\n"
    script = ws.path / "run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    tools.call("Write", {"file_path": "run.sh", "content": "#!/bin/sh\necho hi\n"})
    assert os.stat(script).st_mode & 0o777 == 0o755
    assert not [p for p in ws.path.rglob("*.tmp")]


@pytest.mark.parametrize(
    "target", ["../escape.txt", "/etc/m2agent-escape", ".git/hooks/pre-commit", ".m2agent/x"]
)
def test_write_outside_or_protected_is_refused(
    tools: ToolRegistry, ws: Workspace, target: str
) -> None:
    result = tools.call("Write", {"file_path": target, "content": "pwned"})
    assert result.is_error
    assert "outside the workspace" in result.content or "protected" in result.content
    assert not (ws.path.parent / "escape.txt").exists()


def test_write_through_symlink_leading_out_is_refused(tmp_path: Path, ws: Workspace) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.path / "link").symlink_to(outside)
    result = ToolRegistry([WriteTool(ws)]).call(
        "Write", {"file_path": "link/f.txt", "content": "x"}
    )
    assert result.is_error and "symlink" in result.content
    assert list(outside.iterdir()) == []


def test_edit_replaces_unique_match_and_returns_a_diff(tools: ToolRegistry, ws: Workspace) -> None:
    result = tools.call(
        "Edit",
        {
            "file_path": "src/calc.py",
            "old_string": "def add(a, b):\n    return a - b",
            "new_string": "def add(a, b):\n    return a + b",
        },
    )
    assert not result.is_error, result.content
    assert "-    return a - b" in result.content and "+    return a + b" in result.content
    assert (ws.path / "src/calc.py").read_text().startswith("def add(a, b):\n    return a + b\n")


def test_edit_with_several_matches_lists_them(tools: ToolRegistry, ws: Workspace) -> None:
    result = tools.call(
        "Edit", {"file_path": "src/calc.py", "old_string": "return a - b", "new_string": "return 0"}
    )
    assert result.is_error and "occurs 2 times" in result.content and "lines 2, 6" in result.content
    every = tools.call(
        "Edit",
        {
            "file_path": "src/calc.py",
            "old_string": "return a - b",
            "new_string": "return 0",
            "replace_all": True,
        },
    )
    assert not every.is_error and "replaced 2 occurrences" in every.content


def test_edit_without_match_shows_nearest_candidates(tools: ToolRegistry) -> None:
    result = tools.call(
        "Edit", {"file_path": "src/calc.py", "old_string": "def ad(a, b):", "new_string": "x"}
    )
    assert result.is_error and "was not found" in result.content
    assert "     1\tdef add(a, b):" in result.content
    indented = tools.call(
        "Edit", {"file_path": "src/calc.py", "old_string": "  return a - b\n  ", "new_string": "x"}
    )
    assert indented.is_error


def test_bad_arguments_come_back_as_errors(tools: ToolRegistry) -> None:
    assert "invalid arguments for Read" in tools.call("Read", {}).content
    assert "unknown tool 'Delete'" in tools.call("Delete", {}).content
    same = tools.call("Edit", {"file_path": "src/calc.py", "old_string": "a", "new_string": "a"})
    assert same.is_error and "identical" in same.content


def test_edit_and_write_describe_their_diff_without_writing(
    tools: ToolRegistry, ws: Workspace
) -> None:
    (ws.path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    edit = {"file_path": "calc.py", "old_string": "a - b", "new_string": "a + b"}
    described = tools.describe("Edit", edit)
    assert described.summary == "calc.py" and described.command is None
    assert described.preview is not None
    assert "-    return a - b\n+    return a + b" in described.preview
    created = tools.describe("Write", {"file_path": "new.py", "content": "x = 1\n"})
    assert created.preview is not None and "--- /dev/null" in created.preview
    assert "+x = 1" in created.preview
    failing = tools.describe("Edit", {**edit, "old_string": "nope"})
    assert failing.preview is not None and failing.preview.startswith("(will fail:")
    assert (ws.path / "calc.py").read_text().endswith("a - b\n") and not (
        ws.path / "new.py"
    ).exists()
    with pytest.raises(ToolError, match="invalid arguments for Edit"):
        tools.describe("Edit", {"file_path": "calc.py"})
