"""`m2agent mcp list/approve/revoke` and doctor's MCP lines, on a project with a .mcp.json of
real SDK servers (one that works, one that crashes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from m2agent.cli import app

FIXTURE = str(Path(__file__).resolve().parents[1] / "fakes" / "mcp_server.py")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    servers = {
        "fixture": {"command": sys.executable, "args": [FIXTURE]},
        "broken": {"command": sys.executable, "args": [FIXTURE, "crash"]},
    }
    (tmp_path / ".mcp.json").write_text(json.dumps({"mcpServers": servers}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_project_servers_wait_for_approval_bound_to_their_command(project: Path) -> None:
    code, out = cli("mcp", "list")
    assert code == 0 and out.count("needs approval") == 2
    code, out = cli("mcp", "approve", "nope")
    assert code == 2 and "no project MCP server named nope" in out
    code, out = cli("mcp", "approve", "fixture")
    assert code == 0 and "approved for" in out
    code, out = cli("mcp", "list", "--check")
    assert "fixture          [project, stdio] ready: 9 tools" in out
    assert "mcp__fixture__add" in out and out.count("needs approval") == 1
    data = json.loads((project / ".mcp.json").read_text())
    data["mcpServers"]["fixture"]["args"].append("--changed")
    (project / ".mcp.json").write_text(json.dumps(data))
    code, out = cli("mcp", "list")
    assert out.count("needs approval") == 2  # a changed command asks again
    code, out = cli("mcp", "approve", "--all")
    assert code == 0 and "fixture" in out and "broken" in out
    code, out = cli("mcp", "revoke", "broken")
    assert code == 0 and out.count("needs approval") == 0
    assert cli("mcp", "list")[1].count("needs approval") == 1


def test_doctor_reports_each_server(project: Path) -> None:
    cli("mcp", "approve", "--all")
    _, out = cli("doctor")
    assert "[ok ] mcp fixture: ready: 9 tools (project, stdio)" in out
    assert "[note] mcp broken: failed:" in out and "crash mode" in out


def test_no_servers_configured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out = cli("mcp", "list")
    assert code == 0 and "no MCP servers configured" in out
