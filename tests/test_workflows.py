"""The GitHub workflow and action files: valid YAML of the right shape, least privilege, and
inputs reaching shell steps only through `env:` (never spliced into `run:`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
ACTION = ROOT / ".github" / "actions" / "m2agent" / "action.yml"
EXPRESSION_IN_RUN = re.compile(r"\$\{\{\s*(inputs|github\.event|steps)\.")


def triggers_of(data: dict[Any, Any]) -> Any:
    return data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true


def load(file: Path) -> dict[Any, Any]:
    data = yaml.safe_load(file.read_text())
    assert isinstance(data, dict), file
    return data


def run_steps(data: dict[Any, Any]) -> list[dict[str, Any]]:
    steps = list(data.get("runs", {}).get("steps", []))
    for job in data.get("jobs", {}).values():
        steps += job.get("steps", [])
    return steps


@pytest.mark.parametrize("file", [*WORKFLOWS, ACTION], ids=lambda f: f.name)
def test_no_expressions_spliced_into_shell(file: Path) -> None:
    for step in run_steps(load(file)):
        assert not EXPRESSION_IN_RUN.search(step.get("run", "")), f"{file.name}: {step.get('name')}"


@pytest.mark.parametrize("file", WORKFLOWS, ids=lambda f: f.name)
def test_workflows_have_triggers_jobs_and_permissions(file: Path) -> None:
    data = load(file)
    triggers = triggers_of(data)
    assert triggers and data.get("jobs") and "permissions" in data
    for job in data["jobs"].values():
        assert "runs-on" in job and job.get("steps")


def test_autofix_workflow_is_least_privilege_and_triggered_by_ci_failure() -> None:
    data = load(ROOT / ".github" / "workflows" / "m2agent-autofix.yml")
    triggers = triggers_of(data)
    assert triggers["workflow_run"]["types"] == ["completed"] and "workflow_dispatch" in triggers
    assert data["permissions"] == {"contents": "write", "pull-requests": "write"}


def test_action_declares_its_inputs_and_outputs() -> None:
    action = load(ACTION)
    assert action["runs"]["using"] == "composite"
    assert {"endpoint", "model", "test-command", "max-steps", "branch", "open-pr"} <= set(
        action["inputs"]
    )
    assert set(action["outputs"]) == {"status", "pr-url"}
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert step.get("shell") == "bash"
