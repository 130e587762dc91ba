"""AGENTS.md / CLAUDE.md from the user's folder and from the repository root down to the working
directory, with @path imports that cannot leave the repository."""

from __future__ import annotations

from pathlib import Path

from m2agent.agent.instructions import collect, imports, render
from m2agent.agent.prompts import system_prompt


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_user_then_root_down_to_the_working_directory(tmp_path: Path) -> None:
    repo, user = tmp_path / "repo", tmp_path / "cfg"
    (repo / ".git").mkdir(parents=True)
    write(user / "AGENTS.md", "user rules")
    write(repo / "AGENTS.md", "root agents")
    write(repo / "CLAUDE.md", "root claude")
    write(repo / "pkg" / "CLAUDE.md", "pkg rules")
    write(repo / "pkg" / "sub" / "AGENTS.md", "sub rules")
    write(repo / "other" / "AGENTS.md", "not on the way")
    cwd = repo / "pkg" / "sub"
    texts = [i.text for i in collect(cwd, user)]
    assert texts == ["user rules", "root agents", "root claude", "pkg rules", "sub rules"]
    assert (tmp_path / "AGENTS.md").exists() is False


def test_imports_are_followed_once_and_only_inside_the_repository(tmp_path: Path) -> None:
    repo, home = tmp_path / "repo", tmp_path / "home"
    (repo / ".git").mkdir(parents=True)
    write(home / ".ssh" / "id_rsa", "PRIVATE KEY")
    write(tmp_path / "outside.md", "outside the repo")
    (repo / "docs").mkdir()
    (repo / "docs" / "link.md").symlink_to(home / ".ssh" / "id_rsa")
    write(repo / "docs" / "style.md", "style guide, see @../AGENTS.md and @./more.md")
    write(repo / "docs" / "more.md", "more detail")
    write(
        repo / "AGENTS.md",
        "Read @docs/style.md.\nNot @~/.ssh/id_rsa nor @../outside.md nor @/etc/hostname.\n"
        "Nor the link @docs/link.md.\n"
        "Mail me at a@b.com. `@docs/more.md` in code.\n```\n@docs/more.md\n```\n",
    )
    found = collect(repo, None, home)
    assert [(i.path.name, i.imported_by and i.imported_by.name) for i in found] == [
        ("AGENTS.md", None),
        ("style.md", "AGENTS.md"),
        ("more.md", "style.md"),
    ]
    text = render(found)
    assert "PRIVATE KEY" not in text and "outside the repo" not in text


def test_user_files_may_import_from_home(tmp_path: Path) -> None:
    user, home = tmp_path / "cfg", tmp_path / "home"
    write(home / "notes" / "python.md", "use uv")
    write(user / "CLAUDE.md", "my prefs: @~/notes/python.md")
    ws = tmp_path / "ws"
    ws.mkdir()
    assert [i.text for i in collect(ws, user, home)] == ["my prefs: @~/notes/python.md", "use uv"]


def test_import_references() -> None:
    text = "see @a/b.md, @./c.txt and @~/d.md; not me@host.org, not `@e.md`, not @decorator"
    assert imports(text) == ["a/b.md", "./c.txt", "~/d.md"]


def test_import_cycles_and_depth_end(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    write(tmp_path / "AGENTS.md", "@a.md")
    write(tmp_path / "a.md", "@b.md")
    write(tmp_path / "b.md", "@AGENTS.md @a.md")
    assert [i.path.name for i in collect(tmp_path, None)] == ["AGENTS.md", "a.md", "b.md"]


def test_the_system_prompt_carries_them(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    write(tmp_path / "CLAUDE.md", "Always run ruff.")
    prompt = system_prompt(tmp_path, user_dir=tmp_path / "nothing")
    assert f"Instructions from {tmp_path / 'CLAUDE.md'}:\nAlways run ruff." in prompt
