"""The composite GitHub Action as users copy it, run the way the runner runs it: each `run` step
through `bash --noprofile --norc -eo pipefail` in the user's checkout, `${{ … }}` expressions
in `env:` filled in first, GITHUB_ACTION_PATH set to the action's folder and
GITHUB_ACTION_REPOSITORY / GITHUB_ACTION_REF empty (as they are in composite steps), then
`$GITHUB_OUTPUT` read back. `actions/setup-python` is the one `uses:` step: a fresh virtual
environment first on PATH plays it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from model_server import FakeM2Server

from m2agent.tools.sandbox import bwrap

yaml = pytest.importorskip("yaml")
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.slow,
    pytest.mark.skipif(
        not bwrap.probe().works,
        reason=f"the action runs `m2agent ci` in a sandbox, and none works here: "
        f"{bwrap.probe().diagnosis}. {bwrap.probe().advice}",
    ),
]
ROOT = Path(__file__).resolve().parents[2]
ACTION = ROOT / ".github" / "actions" / "m2agent"
EXPRESSION = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")
FIX = [
    'add() subtracts.\n</think>\n\n<minimax:tool_call>\n<invoke name="Edit">\n'
    '<parameter name="file_path">calc.py</parameter>\n'
    '<parameter name="old_string">return a - b</parameter>\n'
    '<parameter name="new_string">return a + b</parameter>\n</invoke>\n</minimax:tool_call>',
    "Fixed.\n</think>\n\nadd() now adds.",
]


def expand(value: Any, context: dict[str, str]) -> str:
    return EXPRESSION.sub(lambda m: context[m.group(1)], str(value))


def setup_python(tmp_path: Path) -> Path:
    """What setup-python leaves: a Python first on PATH, without m2agent. Its packages come
    from this test run's environment (no downloads), m2agent itself must be installed by the
    action."""
    venv = tmp_path / "runner-python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv / "bin"


def test_the_action_installs_itself_fixes_the_tests_and_sets_its_outputs(tmp_path: Path) -> None:
    user = tmp_path / "user-repo"
    user.mkdir()
    (user / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (user / "test_calc.py").write_text("from calc import add\n\n\ndef test_add():\n"
                                       "    assert add(1, 2) == 3\n")  # fmt: skip
    subprocess.run(["git", "init", "-q", str(user)], check=True)
    output = tmp_path / "github_output"
    output.touch()
    bin_dir = setup_python(tmp_path)
    action = yaml.safe_load((ACTION / "action.yml").read_text())
    with FakeM2Server(FIX, "split") as server:
        inputs = {
            "endpoint": server.url, "model": "m", "open-pr": "false",
            "test-command": f"{bin_dir / 'python'} -m pytest -q -p no:cacheprovider",
        }  # fmt: skip
        context = {f"inputs.{k}": v.get("default", "") for k, v in action["inputs"].items()}
        context |= {f"inputs.{k}": v for k, v in inputs.items()}
        context["github.token"] = "ghs-unused"
        env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "GITHUB_ACTION_PATH": str(ACTION),
            "GITHUB_ACTION_REPOSITORY": "",  # empty in composite run steps
            "GITHUB_ACTION_REF": "",
            "GITHUB_REPOSITORY": "octo/user-repo",  # the user's: never what to install
            "GITHUB_WORKSPACE": str(user),
            "GITHUB_OUTPUT": str(output),
        }
        for step in action["runs"]["steps"]:
            if "uses" in step:
                assert step["uses"].startswith("actions/setup-python@")
                continue
            step_env = {k: expand(v, context) for k, v in (step.get("env") or {}).items()}
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                cwd=user, env={**env, **step_env}, capture_output=True, text=True, timeout=400,
            )  # fmt: skip
            assert done.returncode == 0, f"{step.get('name')}: {done.stdout}\n{done.stderr}"
    installed = subprocess.run(
        [bin_dir / "python", "-c", "import m2agent, sys; print(m2agent.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert installed.stdout.startswith(str(bin_dir.parent))  # installed by the action itself
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert outputs == {"status": "fixed", "pr-url": ""}
    assert (user / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert "+    return a + b" in (user / "m2agent-fix.patch").read_text()


def test_a_copy_of_the_action_in_the_users_repository_refuses_to_install_that_repository(
    tmp_path: Path,
) -> None:
    user = tmp_path / "user-repo"
    copied = user / ".github" / "actions" / "m2agent"
    copied.mkdir(parents=True)
    (copied / "action.yml").write_text((ACTION / "action.yml").read_text())
    (user / "pyproject.toml").write_text('[project]\nname = "their-app"\n')
    action = yaml.safe_load((copied / "action.yml").read_text())
    install = next(s for s in action["runs"]["steps"] if "Install m2agent" in s.get("name", ""))
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", install["run"]],
        cwd=user, capture_output=True, text=True, timeout=60,
        env={**os.environ, "GITHUB_ACTION_PATH": str(copied), "GITHUB_ACTION_REPOSITORY": "",
             "GITHUB_ACTION_REF": ""},
    )  # fmt: skip
    assert done.returncode == 1
    assert "reference it as uses: OWNER/m2agent/.github/actions/m2agent@REF" in done.stderr
