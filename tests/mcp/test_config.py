"""MCP server entries: config.toml and .mcp.json forms, ${VAR} expansion, project approvals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2agent.mcp.config import (
    ConfigError,
    ProjectApprovals,
    merge_servers,
    parse_mcp_json,
    parse_toml_servers,
)


def test_toml_entries_become_specs() -> None:
    specs = parse_toml_servers(
        {
            "files": {
                "command": "npx",
                "args": ["-y", "srv"],
                "env": {"A": "1"},
                "tool_timeout": 5,
            },
            "web": {"url": "http://127.0.0.1:9/mcp", "enabled": False, "headers": {"X": "y"}},
        },
        "config.toml",
    )
    files, web = specs
    assert (files.transport, files.command, files.args, files.env) == (
        "stdio",
        "npx",
        ("-y", "srv"),
        {"A": "1"},
    )
    assert files.tool_timeout_s == 5 and files.source == "user" and not files.allow_network
    assert (web.transport, web.enabled, dict(web.headers)) == ("http", False, {"X": "y"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({}, "either `command`"),
        ({"command": "a", "url": "http://x"}, "either `command`"),
        ({"command": "a", "colour": "red"}, "colour"),
        ({"command": "a", "startup_timeout": 0}, "startup_timeout"),
    ],
)
def test_bad_toml_entries_name_the_entry(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=r"config.toml: \[mcp_servers.s\]") as info:
        parse_toml_servers({"s": entry}, "config.toml")
    assert message in str(info.value)


def test_server_names_must_fit_a_tool_name() -> None:
    with pytest.raises(ConfigError, match="mcp__NAME__TOOL"):
        parse_toml_servers({"has space": {"command": "x"}}, "config.toml")


def test_mcp_json_in_claude_codes_form_with_variables() -> None:
    text = json.dumps(
        {
            "mcpServers": {
                "gh": {"command": "gh", "args": ["--repo", "${REPO}"], "env": {"T": "${TOKEN}"}},
                "api": {"type": "http", "url": "${BASE:-http://127.0.0.1:1}/mcp",
                        "headers": {"Authorization": "Bearer ${TOKEN}"}},
            },
            "otherTool": {"kept": True},
        }
    )  # fmt: skip
    gh, api = parse_mcp_json(text, ".mcp.json", {"REPO": "o/r", "TOKEN": "t0k"})
    assert gh.source == "project" and gh.args == ("--repo", "o/r") and gh.env == {"T": "t0k"}
    assert api.url == "http://127.0.0.1:1/mcp" and api.headers == {"Authorization": "Bearer t0k"}
    assert api.describe() == "http://127.0.0.1:1/mcp (headers: Authorization)"  # not the value


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ({"s": {"command": "x", "args": ["${NOPE}"]}}, r"\$\{NOPE\} is not set"),
        ({"s": {"type": "sse", "url": "http://x"}}, "SSE transport"),
        ({"s": {"type": "http"}}, "needs `url`"),
    ],
)
def test_bad_mcp_json_entries(servers: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_mcp_json(json.dumps({"mcpServers": servers}), ".mcp.json", {})


def test_mcp_json_that_is_not_json() -> None:
    with pytest.raises(ConfigError, match=r"\.mcp\.json: not valid JSON"):
        parse_mcp_json("{", ".mcp.json", {})


def test_user_entries_win_over_project_entries_of_the_same_name() -> None:
    user = parse_toml_servers({"a": {"command": "mine"}}, "config.toml")
    project = parse_mcp_json(
        json.dumps({"mcpServers": {"a": {"command": "theirs"}, "b": {"command": "b"}}}), "j", {}
    )
    merged = merge_servers(user, project)
    assert [(s.name, s.command) for s in merged] == [("a", "mine"), ("b", "b")]


def test_approval_is_bound_to_what_runs(tmp_path: Path) -> None:
    store = tmp_path / "state" / "mcp-approvals.json"
    (spec,) = parse_mcp_json(json.dumps({"mcpServers": {"a": {"command": "ok"}}}), "j", {})
    (changed,) = parse_mcp_json(json.dumps({"mcpServers": {"a": {"command": "evil"}}}), "j", {})
    approvals = ProjectApprovals(store)
    assert not approvals.is_approved(spec)
    approvals.approve([spec])
    reloaded = ProjectApprovals(store)
    assert reloaded.is_approved(spec)
    assert not reloaded.is_approved(changed)  # a changed command asks again
    reloaded.revoke(["a"])
    assert not ProjectApprovals(store).is_approved(spec)
    (user,) = parse_toml_servers({"u": {"command": "x"}}, "config.toml")
    assert reloaded.is_approved(user)  # the user's own servers need no approval


def test_a_corrupt_approvals_file_is_an_error_not_an_approval(tmp_path: Path) -> None:
    store = tmp_path / "mcp-approvals.json"
    store.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="unreadable MCP approvals file"):
        ProjectApprovals(store)
