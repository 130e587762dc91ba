"""Find a project's test command, run it in the sandbox, and summarise the failures for the
model (failing test names and the first error lines)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from m2agent.tools.shell import CommandResult, CommandRunner


@dataclass(frozen=True, slots=True)
class TestRun:
    command: str
    result: CommandResult
    failed: list[str]  # failing test ids, when the runner's output names them
    summary: str  # what the model reads

    @property
    def passed(self) -> bool:
        return self.result.exit_code == 0


NPM_PLACEHOLDER = 'echo "Error: no test specified" && exit 1'
_MAKE_TEST = re.compile(r"^test\s*:", re.MULTILINE)


def detect_test_command(root: Path) -> str | None:
    """The usual test command for the project at `root`, or None. Recognised: package.json
    `scripts.test` (not npm's placeholder), pytest (pytest.ini, conftest.py, pyproject's
    [tool.pytest.ini_options], setup.cfg's [tool:pytest], tox.ini's [pytest], a tests/ folder,
    top-level test_*.py or *_test.py), tox, nox, go.mod, Cargo.toml, a Makefile `test` target."""
    package = root / "package.json"
    if package.is_file():
        try:
            scripts = json.loads(package.read_text(encoding="utf-8")).get("scripts", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            scripts = {}
        if isinstance(scripts, dict) and scripts.get("test") not in (None, NPM_PLACEHOLDER):
            if (root / "pnpm-lock.yaml").exists():
                return "pnpm test"
            if (root / "yarn.lock").exists():
                return "yarn test"
            return "npm test"
    if (
        any((root / f).exists() for f in ("pytest.ini", "conftest.py"))
        or _mentions(root / "pyproject.toml", "[tool.pytest")
        or _mentions(root / "setup.cfg", "[tool:pytest]")
        or _mentions(root / "tox.ini", "[pytest]")
        or (root / "tests").is_dir()
        or any(root.glob("test_*.py"))
        or any(root.glob("*_test.py"))
    ):
        return "python -m pytest -q"
    if (root / "tox.ini").exists():
        return "tox"
    if (root / "noxfile.py").exists():
        return "nox"
    if (root / "go.mod").exists():
        return "go test ./..."
    if (root / "Cargo.toml").exists():
        return "cargo test"
    for name in ("Makefile", "makefile", "GNUmakefile"):
        if _MAKE_TEST.search(_text(root / name)):
            return "make test"
    return None


def _mentions(file: Path, text: str) -> bool:
    return text in _text(file)


def _text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


_PYTEST_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)(?: - (.*))?$", re.MULTILINE)
_GENERIC_FAIL = re.compile(r"^.*(?:FAIL|Error|error:|panicked|AssertionError).*$", re.MULTILINE)


def summarise(command: str, result: CommandResult) -> tuple[list[str], str]:
    if result.timed_out:
        return [], f"`{command}` timed out after {result.duration_s:.0f}s"
    if result.exit_code == 0:
        last = result.output.strip().splitlines()[-1:] or ["(no output)"]
        return [], f"`{command}` passed: {last[0]}"
    failed = [m.group(1) for m in _PYTEST_FAILED.finditer(result.output)]
    lines = [f"`{command}` failed (exit code {result.exit_code})."]
    if failed:
        lines.append("Failing tests:")
        lines += [
            f"- {m.group(1)}" + (f": {m.group(2)}" if m.group(2) else "")
            for m in _PYTEST_FAILED.finditer(result.output)
        ][:30]
    else:
        lines += [m.group(0).strip() for m in _GENERIC_FAIL.finditer(result.output)][:20]
    tail = result.output.strip().splitlines()[-15:]
    lines.append("Last lines of output:")
    lines += tail
    return failed, "\n".join(lines)


def run_tests(runner: CommandRunner, command: str | None = None, timeout_s: float = 600) -> TestRun:
    command = command or detect_test_command(runner.policy.workspace)
    if command is None:
        raise ValueError("no test command found; pass one (e.g. --test-cmd 'pytest -q')")
    result = runner.run(command, timeout_s)
    failed, summary = summarise(command, result)
    return TestRun(command, result, failed, summary)
