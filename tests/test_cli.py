"""The installed `m2agent` command: --help and --version work and stay fast (no torch)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from m2agent import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "m2agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def imported(stderr: str) -> set[str]:
    """Top-level module names from `python -X importtime` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"m2agent {__version__}"
    assert "torch" not in imported(out.stderr)


def test_help() -> None:
    out = run_cli("--help")
    assert out.returncode == 0, out.stderr
    assert "MiniMax-M2" in out.stdout
    assert "--version" in out.stdout
    assert not {"torch", "transformers"} & imported(out.stderr)


def test_unknown_option_is_a_usage_error() -> None:
    out = run_cli("--no-such-flag")
    assert out.returncode == 2
    assert "No such option" in out.stderr


def test_console_script_is_installed() -> None:
    beside_python = Path(sys.executable).parent / "m2agent"
    exe = str(beside_python) if beside_python.exists() else shutil.which("m2agent")
    if exe is None:
        pytest.skip("m2agent console script is not on PATH (package not installed)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert __version__ in out.stdout


def wide_help(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "m2agent", *args, "--help"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "1000"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_help_describes_the_repl_lists_choices_and_keeps_paragraphs_whole() -> None:
    root = wide_help()
    assert "opens the interactive REPL" in root and "not there yet" not in root
    for choices in ("<read-only|ask|auto-edit|auto>", "<openai|completions|anthropic>",
                    "<auto|bwrap|landlock|off>", "<text|json|stream-json>"):  # fmt: skip
        assert choices in root
    assert "--install-completion" in root
    # At a wide terminal each paragraph is one line: no line breaks from the source's wrapping.
    paragraph = next(line for line in root.splitlines() if "With no command" in line)
    assert paragraph.rstrip().endswith("runs one task headless.")
    fix = wide_help("fix")
    codes = next(line for line in fix.splitlines() if "Exit codes:" in line)
    assert codes.rstrip().endswith("errors included.") and "5 changed but unverified" in codes
    serve = wide_help("serve")
    assert "--max-model-len" in serve and "--tensor-parallel-size" in serve


def test_serve_accepts_every_option_of_the_server() -> None:
    """`m2agent serve` lists the server's options itself (for its help); none may go missing."""
    pytest.importorskip("torch")
    import typer.main

    from m2agent.cli import app
    from m2agent.engine.server.__main__ import build_parser

    serve = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    ours = {name for param in serve.params for name in getattr(param, "opts", [])}
    server = {
        name
        for action in build_parser()._actions
        for name in action.option_strings
        if name.startswith("--") and name != "--help"
    }
    assert server - ours == set()
