"""Test-command detection and failure summaries on real projects."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from m2agent.tools.run_tests import NPM_PLACEHOLDER, detect_test_command, run_tests
from m2agent.tools.sandbox import bwrap
from m2agent.tools.sandbox.policy import SandboxPolicy
from m2agent.tools.shell import CommandRunner


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"pyproject.toml": "[tool.pytest.ini_options]\n"}, "python -m pytest -q"),
        ({"tests/test_x.py": ""}, "python -m pytest -q"),
        ({"package.json": json.dumps({"scripts": {"test": "vitest"}})}, "npm test"),
        ({"package.json": json.dumps({"scripts": {"test": "jest"}}), "yarn.lock": ""}, "yarn test"),
        ({"go.mod": "module x\n"}, "go test ./..."),
        ({"Cargo.toml": "[package]\n"}, "cargo test"),
        ({"Makefile": "all:\n\ntest:\n\techo ok\n"}, "make test"),
        ({"Makefile": "test: build\n\t./run\n"}, "make test"),
        ({"Makefile": "all:\n\t@echo no test: here\n"}, None),
        ({"test_calc.py": "", "calc.py": ""}, "python -m pytest -q"),
        ({"calc_test.py": ""}, "python -m pytest -q"),
        ({"pytest.ini": "[pytest]\n"}, "python -m pytest -q"),
        ({"tox.ini": "[pytest]\naddopts = -q\n"}, "python -m pytest -q"),
        ({"tox.ini": "[tox]\nenvlist = py311\n"}, "tox"),
        ({"setup.cfg": "[tool:pytest]\n"}, "python -m pytest -q"),
        ({"package.json": json.dumps({"scripts": {"test": NPM_PLACEHOLDER}})}, None),
        ({"README.md": "nothing"}, None),
    ],
)
def test_detect(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(content)
    assert detect_test_command(tmp_path) == expected


def test_failures_are_summarised(tmp_path: Path) -> None:
    (tmp_path / "test_calc.py").write_text(
        "def add(a, b):\n    return a - b\n\n"
        "def test_add():\n    assert add(1, 2) == 3\n\n"
        "def test_ok():\n    assert True\n"
    )
    mode = "bwrap" if bwrap.probe().works else "off"
    runner = CommandRunner(SandboxPolicy.for_workspace(tmp_path), mode)
    run = run_tests(runner, f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py")
    assert not run.passed
    assert run.failed == ["test_calc.py::test_add"]
    assert "Failing tests:" in run.summary and "test_calc.py::test_add" in run.summary
    (tmp_path / "test_calc.py").write_text("def test_ok():\n    assert True\n")
    fixed = run_tests(runner, f"{sys.executable} -m pytest -q -p no:cacheprovider test_calc.py")
    assert fixed.passed and "passed" in fixed.summary
