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
