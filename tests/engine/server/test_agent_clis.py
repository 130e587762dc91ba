"""Claude Code and Codex CLI, unmodified and with no proxy, complete a turn against
`m2agent serve` (Anthropic Messages API and OpenAI Responses API respectively).

They run from `.node-agents/` (`.ci/run` installs them there with npm), offline, with HOME in a
temp folder. The server is the eager tiny checkpoint (its turns end within a few tokens, as a
real model's do). Claude Code runs with `--bare --system-prompt ... --tools Read` and Codex with
two tool families off: their full prompts are 60k and 35k tokens for the tiny test tokenizer,
minutes of CPU prefill; on a real model and GPU they are what users run.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import Server

pytestmark = [pytest.mark.node, pytest.mark.timeout(300)]

AGENTS = Path(__file__).resolve().parents[3] / ".node-agents" / "node_modules" / ".bin"


def agent(name: str) -> Path:
    path = AGENTS / name
    if not path.exists():
        pytest.skip(f"{path} is missing: run .ci/run (npm install into .node-agents)")
    return path


def offline_env(home: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TERM", "TMPDIR")}
    return {**keep, "HOME": str(home), "NO_COLOR": "1", **extra}


def requests_logged(server: Server, route: str) -> list[str]:
    return [line for line in server.log.read_text().splitlines() if f"POST {route} 200 " in line]


def test_claude_code_completes_a_turn(eager_server: Server, tmp_path: Path) -> None:
    claude = agent("claude")
    env = offline_env(
        tmp_path,
        ANTHROPIC_BASE_URL=eager_server.root,
        ANTHROPIC_API_KEY="none",
        ANTHROPIC_MODEL="tiny-m2",
        ANTHROPIC_SMALL_FAST_MODEL="tiny-m2",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
    )
    before = len(requests_logged(eager_server, "/v1/messages"))
    result = subprocess.run(
        [
            str(claude),
            "-p",
            "say hi",
            "--output-format",
            "json",
            "--bare",
            "--system-prompt",
            "You are terse.",
            "--tools",
            "Read",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["is_error"] is False, outcome
    assert outcome["usage"]["output_tokens"] > 0
    assert len(requests_logged(eager_server, "/v1/messages")) > before


def test_codex_exec_completes_a_turn(eager_server: Server, tmp_path: Path) -> None:
    codex = agent("codex")
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(
        'model = "tiny-m2"\n'
        'model_provider = "m2agent"\n\n'
        "[model_providers.m2agent]\n"
        'name = "m2agent serve"\n'
        f'base_url = "{eager_server.base_url}"\n'
        'wire_api = "responses"\n'
        "request_max_retries = 0\n"
        "stream_max_retries = 0\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    before = len(requests_logged(eager_server, "/v1/responses"))
    result = subprocess.run(
        [
            str(codex),
            "exec",
            "--skip-git-repo-check",
            "-c",
            'web_search="disabled"',
            "--disable",
            "multi_agent",
            "--disable",
            "goals",
            "say hi",
        ],
        cwd=work,
        env=offline_env(tmp_path, CODEX_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stderr, result.stderr
    assert len(requests_logged(eager_server, "/v1/responses")) > before
