"""KV capacity per parallel layout, computed from the config: full-size M2 in FP8 against the
published sizes, and the arithmetic of what is left for the pool."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from m2agent.cli import app
from m2agent.engine.bench.capacity import GIB, capacity_report, layout_capacity
from m2agent.engine.model_config import load_model_config

M2 = load_model_config(Path(__file__).parents[2] / "engine/configs/minimax-m2.json")


def test_full_size_m2_fp8_per_rank() -> None:
    two = layout_capacity(M2, 2, 140 * GIB, 0.9, 4 * GIB)
    # 229B parameters, ~230 GB as FP8 with bf16 embeddings/head and fp32 routers.
    assert 225e9 < 2 * two.weight_bytes_per_rank < 235e9
    assert two.kv_bytes_per_token_per_rank == 2 * 62 * 4 * 128 * 2  # 4 of 8 KV heads, bf16
    left = int(140 * GIB * 0.9) - two.weight_bytes_per_rank - 4 * GIB
    assert two.kv_tokens == left // two.kv_bytes_per_token_per_rank
    eight = layout_capacity(M2, 8, 140 * GIB, 0.9, 4 * GIB)
    assert eight.expert_parallel_size == 8  # TP8 cannot cut FP8 experts: whole experts
    assert eight.weight_bytes_per_rank < two.weight_bytes_per_rank / 3.9


def test_no_room_is_zero_tokens_and_the_cli_prints_the_table() -> None:
    report = capacity_report(M2, [2, 4], 80 * GIB)
    assert report.layouts[0].kv_tokens == 0  # 2 x 80 GB cannot hold 230 GB
    assert report.layouts[1].kv_tokens > 200_000
    result = CliRunner().invoke(app, ["bench", "capacity", "--gpus", "2,4"])
    assert result.exit_code == 0, result.output
    assert "KV tokens" in result.output and "   4   1" in result.output
