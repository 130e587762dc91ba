"""Grep (ripgrep and the Python fallback agree), Glob, TodoWrite and the tool schemas."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from m2agent.tools import Workspace, default_tools
from m2agent.tools.search import GlobTool, GrepTool
from m2agent.tools.todo import TodoList


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "app.py").write_text("import os\n\ndef main():\n    return os.getcwd()\n")
    (root / "src" / "util.py").write_text("def helper():\n    return 'Main helper'\n")
    (root / "build").mkdir()
    (root / "build" / "gen.py").write_text("def main(): pass\n")
    (root / ".gitignore").write_text("build/\n")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return Workspace(root)


@pytest.mark.parametrize("engine", ["ripgrep", "python"])
def test_grep_modes_and_gitignore(ws: Workspace, engine: str) -> None:
    if engine == "ripgrep" and shutil.which("rg") is None:
        pytest.skip("ripgrep is not installed")
    tool = GrepTool(ws, ripgrep="auto" if engine == "ripgrep" else None)
    files = tool.run(
        tool.Args.model_validate({"pattern": r"def \w+\(", "output_mode": "files_with_matches"})
    )
    assert sorted(files.content.splitlines()) == ["src/app.py", "src/util.py"]  # build/ ignored
    content = tool.run(
        tool.Args.model_validate({"pattern": "main", "output_mode": "content", "-i": True})
    )
    assert "src/app.py:3:def main():" in content.content
    assert "src/util.py:2:    return 'Main helper'" in content.content
    count = tool.run(
        tool.Args.model_validate({"pattern": "return", "output_mode": "count", "glob": "app.py"})
    )
    assert count.content.strip() == "src/app.py:1"
    none = tool.run(tool.Args.model_validate({"pattern": "zzz"}))
    assert "No matches" in none.content


def test_grep_bad_regex_is_an_error(ws: Workspace) -> None:
    registry = default_tools(ws, TodoList())
    result = registry.call("Grep", {"pattern": "("})
    assert result.is_error and "invalid regular expression" in result.content


def test_glob_newest_first_respecting_gitignore(ws: Workspace) -> None:
    later = ws.path / "src" / "util.py"
    os.utime(later, (time.time() + 10, time.time() + 10))
    tool = GlobTool(ws)
    result = tool.run(tool.Args.model_validate({"pattern": "**/*.py"}))
    assert result.content.splitlines() == ["src/util.py", "src/app.py"]
    assert "No files" in tool.run(tool.Args.model_validate({"pattern": "*.rs"})).content


def test_todo_write_keeps_the_plan(ws: Workspace) -> None:
    todos = TodoList()
    registry = default_tools(ws, todos)
    result = registry.call(
        "TodoWrite",
        {
            "todos": [
                {"content": "Read the test", "status": "completed"},
                {"content": "Fix add()", "status": "in_progress"},
            ]
        },
    )
    assert not result.is_error
    assert todos.render() == "[x] Read the test\n[~] Fix add()"
    two = registry.call(
        "TodoWrite",
        {
            "todos": [
                {"content": "a", "status": "in_progress"},
                {"content": "b", "status": "in_progress"},
            ]
        },
    )
    assert two.is_error and "only one" in two.content


def test_schemas_use_claude_code_names(ws: Workspace) -> None:
    schemas = {
        s["function"]["name"]: s["function"] for s in default_tools(ws, TodoList()).schemas()
    }
    assert list(schemas) == ["Read", "Write", "Edit", "Bash", "Grep", "Glob", "TodoWrite"]
    assert set(schemas["Read"]["parameters"]["properties"]) == {"file_path", "offset", "limit"}
    assert schemas["Read"]["parameters"]["required"] == ["file_path"]
    assert set(schemas["Edit"]["parameters"]["properties"]) == {
        "file_path",
        "old_string",
        "new_string",
        "replace_all",
    }
    assert set(schemas["Bash"]["parameters"]["properties"]) == {"command", "timeout", "description"}
    assert "-i" in schemas["Grep"]["parameters"]["properties"]
    assert all(s["description"] for s in schemas.values())
