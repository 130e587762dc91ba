"""A real `m2agent serve` process on a tiny checkpoint, on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from m2agent.engine.models.tiny import TinySpec, write_tiny_checkpoint


def read_calls(*paths: str) -> str:
    """Model output that calls Read once per path, all in one tool-call block."""
    calls = "".join(
        f'<invoke name="Read">\n<parameter name="file_path">{path}</parameter>\n</invoke>\n'
        for path in paths
    )
    return f"R</think>\n\n<minimax:tool_call>\n{calls}</minimax:tool_call>"


@dataclass(frozen=True)
class Server:
    base_url: str  # ends in /v1
    root: str
    model: str
    api_key: str | None
    log: Path


def start_server(checkpoint: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start `m2agent serve --port 0` and read the address it reports."""
    args = [
        sys.executable, "-m", "m2agent", "serve", "--model", str(checkpoint), "--device", "cpu",
        "--port", "0", "--served-model-name", "tiny-m2", "--log-file", str(log), *extra,
    ]  # fmt: skip
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy()
    )
    assert process.stdout is not None
    seen = []
    for line in process.stdout:  # ends at EOF if the server dies
        seen.append(line)
        match = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", line)
        if match:
            root = match.group(1)
            break
    else:
        process.wait(timeout=10)
        raise RuntimeError(
            "server exited: " + "".join(seen) + (log.read_text() if log.exists() else "")
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                return process, root
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not become healthy in 60 s")


@pytest.fixture(scope="session")
def server_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny")


def _serve(
    checkpoint: Path, tmp: Path, *extra: str, api_key: str | None = None
) -> Iterator[Server]:
    log = tmp / "server.log"
    args = [*extra] + (["--api-key", api_key] if api_key else [])
    process, root = start_server(checkpoint, log, *args)
    try:
        yield Server(f"{root}/v1", root, "tiny-m2", api_key, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def server(server_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from _serve(server_checkpoint, tmp_path_factory.mktemp("log"), "--max-model-len", "1024")


@pytest.fixture(scope="session")
def split_server(
    server_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _serve(
        server_checkpoint,
        tmp_path_factory.mktemp("log"),
        "--reasoning-mode",
        "split",
        api_key="sekrit",
    )


@pytest.fixture(scope="session")
def eager_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint whose generation_config.json lists a quarter of the ordinary tokens as
    end-of-turn tokens, so the random model ends its turns within a few tokens (as a real model
    does) and agents driven by it finish their runs. Context 32k, for agents' long prompts."""
    folder = write_tiny_checkpoint(
        tmp_path_factory.mktemp("eager") / "tiny", TinySpec(max_positions=32768)
    )
    added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
    first_added = min(token["id"] for token in added)
    config_file = folder / "generation_config.json"
    config = json.loads(config_file.read_text())
    config["eos_token_id"] = [config["eos_token_id"], *range(0, first_added, 4)]
    config_file.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def eager_server(
    eager_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    yield from _serve(eager_checkpoint, tmp_path_factory.mktemp("log"))
