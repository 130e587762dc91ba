"""`m2agent serve --tp 2` on CPU: two processes behind one OpenAI-compatible server, answering
exactly what the one-process server answers; and a worker that dies takes the server down
with a message instead of leaving it hung."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import Server, _serve

pytestmark = pytest.mark.timeout(300)

MESSAGES: Any = [{"role": "user", "content": "Fix the failing test in tests/test_calc.py"}]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def greedy_reply(server: Server) -> tuple[str, Any]:
    client = openai.OpenAI(base_url=server.base_url, api_key="none")
    reply = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=24, temperature=0
    )
    usage = reply.usage
    assert usage is not None
    # Cached tokens depend on what the server answered before: not part of the answer.
    return reply.choices[0].message.content or "", (usage.prompt_tokens, usage.completion_tokens)


def test_tp2_server_answers_like_the_single_process_one(
    server: Server, server_checkpoint: Path, tmp_path: Path
) -> None:
    expected = greedy_reply(server)
    for split in _serve(server_checkpoint, tmp_path, "--max-model-len", "1024", "--tp", "2"):
        assert greedy_reply(split) == expected
        log = split.log.read_text()
        assert "tensor-parallel 2" in log and "tp1 " in log  # both ranks log to --log-file


def test_a_dead_worker_stops_the_server_with_a_reason(
    server_checkpoint: Path, tmp_path: Path
) -> None:
    from .conftest import start_server

    process, _ = start_server(server_checkpoint, tmp_path / "log", "--tp", "2")
    try:
        workers = children(process.pid)
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        assert process.wait(timeout=30) == 1
        assert process.stdout is not None
        said = process.stdout.read()
        assert "tensor-parallel rank 1 exited (killed by SIGKILL)" in said
    finally:
        if process.poll() is None:
            process.kill()


def test_tp_that_does_not_split_is_a_clear_error(server_checkpoint: Path, tmp_path: Path) -> None:
    import sys

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "m2agent", "serve", "--model", str(server_checkpoint),
         "--device", "cpu", "--tp", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "num_attention_heads (4) is not divisible by the tensor-parallel size 3" in done.stderr
    assert time.monotonic() - started < 60
    bad = subprocess.run(
        [sys.executable, "-m", "m2agent", "serve", "--model", str(server_checkpoint), "--tp", "0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "expected a positive integer" in bad.stderr
