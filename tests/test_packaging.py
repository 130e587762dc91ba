"""A wheel built from the tree installs into a fresh venv and imports by the installed names."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_and_imports_mapped_packages(tmp_path: Path) -> None:
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("m2agent", "engine", "tools"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = dist.glob("m2agent-*.whl")
    # Every module of the tree is in the wheel under its installed name (a package missing
    # from pyproject's list would otherwise only show as an ImportError on a user's machine).
    expected = {
        f"m2agent/{prefix}{path.relative_to(ROOT / folder).as_posix()}"
        for folder, prefix in (("m2agent", ""), ("engine", "engine/"), ("tools", "tools/"))
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    with zipfile.ZipFile(wheel) as archive:
        missing = expected - set(archive.namelist())
    assert not missing, f"not in the wheel: {sorted(missing)}"

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    code = (
        "import m2agent, m2agent.engine, m2agent.engine.protocol, m2agent.tools\n"
        "from m2agent.engine.protocol import render_prompt\n"
        "print(m2agent.engine.protocol.__file__)\n"
        "prompt = render_prompt([{'role': 'user', 'content': 'hi'}])\n"
        "print(prompt.endswith(']~b]ai\\n<think>\\n'))\n"
        "from importlib.resources import files\n"
        "print(files('m2agent.engine').joinpath('configs/minimax-m2.json').is_file())"
    )
    # Run outside the source tree so only the installed copy can be imported.
    out = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert out.returncode == 0, out.stderr
    location, rendered, has_config = out.stdout.split()
    assert "site-packages" in location
    assert rendered == "True"
    assert has_config == "True"
