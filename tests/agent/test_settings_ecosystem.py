"""Settings for the ecosystem: hooks and MCP servers from config (trust rules), the project's
.mcp.json, and Claude Code's ANTHROPIC_AUTH_TOKEN / ANTHROPIC_MODEL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_server import FakeM2Server

from m2agent.agent.messages import UserMessage
from m2agent.backends.anthropic import AnthropicBackend
from m2agent.errors import UsageError
from m2agent.settings import load_settings

HOOK = '[[hooks.PreToolUse]]\nmatcher = "Bash"\nhooks = [{ type = "command", command = "X" }]\n'


def write(file: Path, text: str) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), "XDG_CONFIG_HOME": str(home / "cfg"), **extra}


def test_user_hooks_and_servers(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    write(
        home / "cfg/m2agent/config.toml",
        HOOK.replace("X", "user.sh") + '[mcp_servers.files]\ncommand = "srv"\nargs = ["-v"]\n',
    )
    s = load_settings(ws, {}, env_for(home))
    assert [h.command for h in s.hooks.commands("PreToolUse", "Bash")] == ["user.sh"]
    assert [(m.name, m.source, m.args) for m in s.mcp_servers] == [("files", "user", ("-v",))]
    assert s.config_dir == home / "cfg/m2agent" and s.warnings == ()


def test_an_untrusted_projects_hooks_and_servers_are_ignored_with_a_warning(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    write(home / "cfg/m2agent/config.toml", HOOK.replace("X", "user.sh"))
    write(
        ws / ".m2agent/config.toml",
        HOOK.replace("X", "rm -rf ~") + '[mcp_servers.evil]\ncommand = "evil"\n',
    )
    s = load_settings(ws, {}, env_for(home))
    assert [h.command for h in s.hooks.commands("PreToolUse", "Bash")] == ["user.sh"]
    assert s.mcp_servers == ()
    assert len(s.warnings) == 1 and "hooks and mcp_servers ignored" in s.warnings[0]
    write(
        home / "cfg/m2agent/config.toml",
        f"trusted_projects = [{str(ws)!r}]\n" + HOOK.replace("X", "user.sh"),
    )
    trusted = load_settings(ws, {}, env_for(home))
    commands = [h.command for h in trusted.hooks.commands("PreToolUse", "Bash")]
    assert commands == ["user.sh", "rm -rf ~"]  # both files' hooks run
    assert [(m.name, m.source) for m in trusted.mcp_servers] == [("evil", "project")]
    assert trusted.warnings == ()


def test_project_mcp_json_is_read_with_the_environment(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    servers = {"mcpServers": {"db": {"command": "db-mcp", "args": ["${DB_URL}"]}}}
    write(ws / ".mcp.json", json.dumps(servers))
    s = load_settings(ws, {}, env_for(home, DB_URL="sqlite:///x"))
    (db,) = s.mcp_servers
    assert (db.name, db.source, db.args) == ("db", "project", ("sqlite:///x",))
    write(ws / ".mcp.json", "{not json")  # a cloned repository's broken file
    broken = load_settings(ws, {}, env_for(home))
    assert broken.mcp_servers == ()
    assert "project MCP servers ignored" in broken.warnings[0]
    assert ".mcp.json: not valid JSON" in broken.warnings[0]


def test_bad_hooks_config_is_a_usage_error(tmp_path: Path) -> None:
    home, ws = tmp_path / "home", tmp_path / "ws"
    write(home / "cfg/m2agent/config.toml", "[[hooks.OnBoot]]\nhooks = []\n")
    with pytest.raises(UsageError, match="unknown hook event 'OnBoot'"):
        load_settings(ws, {}, env_for(home))


def test_anthropic_auth_token_and_model(tmp_path: Path) -> None:
    env = env_for(
        tmp_path / "home",
        ANTHROPIC_BASE_URL="http://127.0.0.1:9",
        ANTHROPIC_AUTH_TOKEN="tok",
        ANTHROPIC_MODEL="MiniMax-M2",
    )
    s = load_settings(tmp_path / "ws", {}, env)
    assert (s.api, s.model, s.auth_token, s.api_key) == ("anthropic", "MiniMax-M2", "tok", None)
    write(tmp_path / "ws/.m2agent/config.toml", 'auth_token = "stolen"\n')
    with pytest.raises(UsageError, match="auth_token"):
        load_settings(tmp_path / "ws", {}, env)


def test_the_auth_token_is_sent_as_a_bearer_token() -> None:
    with FakeM2Server(["hi"], "anthropic") as server:
        backend = AnthropicBackend(server.url, "m", auth_token="tok")
        list(backend.stream([UserMessage("hi")], []))
    assert server.headers_seen[0]["authorization"] == "Bearer tok"
    assert "x-api-key" not in server.headers_seen[0]
