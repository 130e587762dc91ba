"""Test isolation: no test sees the user's home, config, keys or endpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Test doubles that speak real protocols (tests/fakes) import as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parent / "fakes"))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))
    for name in list(os.environ):
        if name.startswith(("M2AGENT_", "OPENAI_", "ANTHROPIC_")):
            monkeypatch.delenv(name)


# Tests that start processes as the unprivileged user (uid 65534) share that user's process
# count, which RLIMIT_NPROC limits per user: they run one after another on one xdist worker
# (`--dist loadgroup` in pyproject.toml), or one's processes would count against another's.
_AS_NOBODY = ("tests/tools/attacks/", "tests/tools/test_sandbox.py::test_as_an_unprivileged_user")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(part in item.nodeid for part in _AS_NOBODY):
            item.add_marker(pytest.mark.xdist_group("as-nobody"))
