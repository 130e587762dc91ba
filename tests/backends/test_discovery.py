"""The embedded engine as the default: weights found in a real Hugging Face cache layout, the
split they need on the GPUs there are, and a newcomer's machine where they cannot be served
(told exactly how to point at an endpoint instead). Also: the tiny checkpoint's context holds
the agent's first prompt. (The engine started from the cache: tests/e2e/test_fix.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from m2agent.agent.messages import SystemMessage, UserMessage, chat_messages
from m2agent.agent.prompts import system_prompt
from m2agent.backends.discovery import Gpu, hub_snapshot, plan
from m2agent.settings import load_settings
from m2agent.tools import Workspace, default_tools
from m2agent.tools.todo import TodoList

H200 = Gpu("NVIDIA H200", 141 << 30)


def fake_cache(root: Path, revision: str = "abc123", shard_bytes: int = 0) -> Path:
    """`root` laid out as huggingface_hub lays out a download of MiniMaxAI/MiniMax-M2."""
    repo = root / "models--MiniMaxAI--MiniMax-M2"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    (snapshot / "config.json").write_text("{}")
    if shard_bytes:
        blob = repo / "blobs" / "0001"
        blob.parent.mkdir()
        with blob.open("wb") as handle:
            handle.truncate(shard_bytes)  # sparse: no disk used
        (snapshot / "model-00001.safetensors").symlink_to(blob)
    return snapshot


def test_the_snapshot_refs_main_names_is_found(tmp_path: Path) -> None:
    assert hub_snapshot(tmp_path) is None
    snapshot = fake_cache(tmp_path)
    older = snapshot.parent / "0ld"
    older.mkdir()
    (older / "config.json").write_text("{}")
    assert hub_snapshot(tmp_path) == snapshot


def test_hf_home_and_hf_hub_cache_decide_where_to_look(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert load_settings(tmp_path, {}, env).hf_hub_cache == tmp_path / ".cache/huggingface/hub"
    home = load_settings(tmp_path, {}, {**env, "HF_HOME": "/data/hf"}).hf_hub_cache
    assert home == Path("/data/hf/hub")
    cache = load_settings(tmp_path, {}, {**env, "HF_HOME": "/x", "HF_HUB_CACHE": "/y"})
    assert cache.hf_hub_cache == Path("/y")


@pytest.mark.parametrize(
    ("size_gb", "gpus", "expected_tp"),
    [
        (230, [H200] * 8, 2),  # M2 in FP8: ~230 GB, two H200s
        (230, [H200] * 4, 2),
        (60, [H200] * 8, 1),
        (460, [H200] * 8, 4),  # bf16 weights
        (230, [H200], None),  # does not fit on one
        (230, [], None),  # no GPU
        (1, [], 1),  # a test-sized checkpoint runs on CPU
    ],
)
def test_the_split_the_weights_need(size_gb: int, gpus: list[Gpu], expected_tp: int | None) -> None:
    chosen = plan(Path("/w"), size_gb * 10**9, gpus)
    assert chosen.tp == expected_tp, chosen.why
    assert plan(Path("/w"), size_gb * 10**9, gpus or [H200], tp=8).tp == 8  # the user's choice


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has GPUs")
def test_weights_too_big_for_this_machine_say_how_to_use_an_endpoint(tmp_path: Path) -> None:
    snapshot = fake_cache(tmp_path / "hub", shard_bytes=3 << 30)
    (tmp_path / "repo").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "m2agent", "fix", "x", "--yes", "--test-cmd", "true",
         "--sandbox", "off"],
        cwd=tmp_path / "repo", capture_output=True, text=True, timeout=60,
        env={**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub")},
    )  # fmt: skip
    assert done.returncode == 2
    assert f"found MiniMax-M2 weights at {snapshot}" in done.stderr
    assert "no GPU here for 3 GiB" in done.stderr and "--endpoint URL --model NAME" in done.stderr


def test_the_tiny_checkpoint_holds_the_agents_first_prompt(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    from m2agent.engine.models.tiny import write_tiny_checkpoint
    from m2agent.engine.protocol import render_prompt

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny")
    window = json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"]
    workspace = tmp_path / "repo"
    workspace.mkdir()
    tools = default_tools(Workspace(workspace), TodoList(), sandbox="off").schemas()
    first = chat_messages([SystemMessage(system_prompt(workspace)), UserMessage("fix the bug")])
    prompt = render_prompt(first, tools)
    tokens = len(Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode(prompt).ids)
    assert tokens + 8192 <= window, (tokens, window)  # and room for a full answer
