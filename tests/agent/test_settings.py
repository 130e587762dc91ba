"""Settings: precedence, the project-trust rule, and clear errors for bad config."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2agent.errors import UsageError
from m2agent.settings import load_settings


def write(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg"), **extra}


def test_precedence_flags_env_project_user(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    write(
        home / "cfg/m2agent/config.toml",
        'model = "user-model"\nmax_steps = 7\nendpoint = "http://user/v1"\n'
        f"trusted_projects = [{str(ws)!r}]\n",
    )
    write(ws / ".m2agent/config.toml", "max_steps = 9\n")
    s = load_settings(ws, {}, env_for(home))
    assert (s.model, s.max_steps, s.endpoint) == ("user-model", 9, "http://user/v1")
    s = load_settings(
        ws, {}, env_for(home, M2AGENT_MODEL="env-model", OPENAI_BASE_URL="http://oai/v1")
    )
    assert (s.model, s.endpoint) == ("env-model", "http://oai/v1")
    s = load_settings(
        ws, {"model": "flag-model", "max_steps": None}, env_for(home, M2AGENT_MODEL="env-model")
    )
    assert s.model == "flag-model" and s.max_steps == 9
    s = load_settings(ws, {}, env_for(home, ANTHROPIC_BASE_URL="http://ant", ANTHROPIC_API_KEY="k"))
    assert (s.api, s.endpoint, s.api_key) == ("anthropic", "http://ant", "k")


def test_untrusted_project_cannot_redirect_endpoints_or_widen_the_sandbox(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    write(ws / ".m2agent/config.toml", 'endpoint = "http://evil/v1"\nsandbox = "off"\n')
    with pytest.raises(
        UsageError, match="sets endpoint, sandbox, which only a trusted project may"
    ):
        load_settings(ws, {}, env_for(home))
    write(home / "cfg/m2agent/config.toml", f"trusted_projects = [{str(ws)!r}]\n")
    assert load_settings(ws, {}, env_for(home)).sandbox == "off"


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    write(home / "cfg/m2agent/config.toml", "model = \n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_settings(ws, {}, env_for(home))
    write(home / "cfg/m2agent/config.toml", "modle = 'x'\n")
    with pytest.raises(UsageError, match="unknown setting"):
        load_settings(ws, {}, env_for(home))
    write(home / "cfg/m2agent/config.toml", "api = 'grpc'\n")
    with pytest.raises(UsageError, match="api must be"):
        load_settings(ws, {}, env_for(home))


def test_project_state_lives_outside_the_repository(tmp_path: Path) -> None:
    s = load_settings(tmp_path, {}, env_for(tmp_path / "home"))
    assert not s.project_dir(tmp_path).is_relative_to(tmp_path / "ws")
    assert s.project_dir(tmp_path).is_relative_to(tmp_path / "home")


def test_tensor_parallel_size_from_config_env_and_flags(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    assert load_settings(ws, {}, env_for(home)).tp == 1
    write(home / "cfg/m2agent/config.toml", "tp = 2\n")
    assert load_settings(ws, {}, env_for(home)).tp == 2
    assert load_settings(ws, {}, env_for(home, M2AGENT_TP="4")).tp == 4
    assert load_settings(ws, {"tp": 8}, env_for(home, M2AGENT_TP="4")).tp == 8
    with pytest.raises(UsageError, match="M2AGENT_TP must be a positive integer, got 'two'"):
        load_settings(ws, {}, env_for(home, M2AGENT_TP="two"))
    for bad in ("0", "-1"):
        with pytest.raises(UsageError, match="tp must be a positive integer"):
            load_settings(ws, {}, env_for(home, M2AGENT_TP=bad))
    write(home / "cfg/m2agent/config.toml", 'tp = "2"\n')
    with pytest.raises(UsageError, match=r"tp must be a positive integer .* got '2'"):
        load_settings(ws, {}, env_for(home))
