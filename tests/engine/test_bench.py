"""`m2agent bench latency` plumbing on CPU (no timing assertions: numbers are reported, not
tested): the baseline really runs on our weights, and the CLI prints and writes a report."""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM
from m2agent.engine.bench.common import BUILTIN_CONFIGS, build_transformers_model, reduced_config
from m2agent.engine.bench.roofline import decode_bytes_per_token
from m2agent.engine.errors import ConfigError
from m2agent.engine.model_config import load_model_config

SHARED_CONFIG = BUILTIN_CONFIGS / "minimax-m2.json"


def small_config(tmp_path: Path) -> Path:
    raw = {
        "architectures": ["MiniMaxM2ForCausalLM"],
        "model_type": "minimax_m2",
        "hidden_size": 256,  # FP8 blocks are 128x128: every quantized dim a multiple of 128
        "intermediate_size": 128,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 128,
        "rotary_dim": 64,
        "rope_theta": 5000000,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "vocab_size": 300,
        "max_position_embeddings": 2048,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]},
    }
    file = tmp_path / "small.json"
    file.write_text(json.dumps(raw))
    return file


def run_m2agent(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """`m2agent ARGS` in a fresh interpreter (the CLI as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "m2agent", *args], capture_output=True, text=True, timeout=timeout
    )


def test_full_size_bytes_per_token_matches_the_published_roofline() -> None:
    config = load_model_config(SHARED_CONFIG)
    # ENGINE.md: 6 layers at full width in bf16 read 3.13 GB per token (weights only).
    six = decode_bytes_per_token(dataclasses.replace(config, num_hidden_layers=6), 2, 0)
    assert abs(six / 1e9 - 3.13) < 0.02


@pytest.mark.parametrize("quant", ["auto", "fp8", "bf16"])
def test_transformers_baseline_runs_on_our_weights(tmp_path: Path, quant: str) -> None:
    """The dummy model keeps the config's FP8 (auto), or is made FP8 or bf16; transformers gets
    the same weights (dequantized when FP8) under an unquantized config."""
    pytest.importorskip("transformers")
    config = small_config(tmp_path)
    folder = reduced_config(config, 2, tmp_path / "model", quant)
    llm = LLM(folder, dtype="float32", load_format="dummy", seed=3)
    fp8 = quant != "bf16"
    assert (llm.config.fp8 is not None) == fp8
    dtypes = {p.dtype for p in llm.model.parameters()}
    assert (torch.float8_e4m3fn in dtypes) == fp8
    baseline = reduced_config(config, 2, tmp_path / "baseline", "bf16")
    assert "quantization_config" not in json.loads((baseline / "config.json").read_text())
    reference = build_transformers_model(llm, baseline, "eager")
    ids = [5, 17, 250, 3, 99, 42]
    ours = llm.prompt_logits(ids)
    with torch.inference_mode():
        theirs = reference(torch.tensor([ids])).logits[0].float()
    # transformers keeps the router in the model dtype: identical here in fp32.
    torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)


def test_bench_latency_cli_on_cpu(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "report.json"
    args = [
        "bench", "latency", "--dummy-config", str(small_config(tmp_path)), "--layers", "2",
        "--prompt-tokens", "16", "--new-tokens", "4", "--device", "cpu", "--repeats", "1",
        "--json", str(out),
    ]  # fmt: skip
    result = run_m2agent(*args)
    assert result.returncode == 0, result.stderr
    assert "m2agent engine" in result.stdout and "bandwidth bound" in result.stdout
    report = json.loads(out.read_text())
    assert [t["name"] for t in report["timings"]] == ["m2agent engine", "transformers (grouped_mm)"]
    assert report["layers"] == 2 and report["bound_tok_s"] > 0
    assert report["quant"] == "fp8" and report["weight_bytes"] > 0  # the config's default


def test_bench_throughput_cli_on_cpu_reports_medians_of_warm_rounds(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "report.json"
    args = [
        "bench", "throughput", "--dummy-config", str(small_config(tmp_path)), "--layers", "1",
        "--streams", "1,3", "--prompt-tokens", "8", "--new-tokens", "3", "--device", "cpu",
        "--repeats", "2", "--temperature", "1.0", "--json", str(out),
    ]  # fmt: skip
    result = run_m2agent(*args)
    assert result.returncode == 0, result.stderr
    progress = result.stdout + result.stderr
    assert "3 streams, run 2/2" in progress and "transformers, 1 streams, run 2/2" in progress
    report = json.loads(out.read_text())
    assert report["temperature"] == 1.0 and "sampled at temperature 1.0" in result.stdout
    rows = report["rows"]
    assert [r["streams"] for r in rows] == [1, 3]
    for row in rows:
        assert len(row["engine_tok_s_runs"]) == len(row["baseline_tok_s_runs"]) == 2
        assert row["engine_tok_s"] == statistics.median(row["engine_tok_s_runs"])
        assert row["baseline_tok_s"] == statistics.median(row["baseline_tok_s_runs"])
        assert row["engine_last_ttft_ms"] == statistics.median(row["engine_last_ttft_ms_runs"])
        assert row["engine_builds_runs"] is None  # no Triton on CPU: builds are not counted


def test_reduced_config_quant_choices(tmp_path: Path) -> None:
    bf16 = json.loads(
        (reduced_config(SHARED_CONFIG, 3, tmp_path / "a", "bf16") / "config.json").read_text()
    )
    auto = json.loads(
        (reduced_config(SHARED_CONFIG, 3, tmp_path / "b") / "config.json").read_text()
    )
    assert "quantization_config" not in bf16 and bf16["num_hidden_layers"] == 3
    assert auto["quantization_config"]["weight_block_size"] == [128, 128]
    with pytest.raises(ConfigError, match="quant must be"):
        reduced_config(SHARED_CONFIG, 3, tmp_path / "c", "int4")


def test_bench_latency_needs_exactly_one_source() -> None:
    result = run_m2agent("bench", "latency", timeout=60)
    assert result.returncode == 2
    assert "--model PATH or --dummy-config" in result.stderr


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the message of a machine without CUDA"
)
@pytest.mark.parametrize("bench", ["latency", "throughput", "agent"])
def test_benches_on_cuda_say_so_without_a_gpu(bench: str) -> None:
    """The default device is cuda: without one, a clear error and no traceback."""
    result = run_m2agent(
        "bench", bench, "--dummy-config", "minimax-m2", "--layers", "1", timeout=120
    )
    assert result.returncode == 1
    assert "CUDA is not available here" in result.stderr
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr


def test_bench_kernels_says_it_needs_cuda() -> None:
    result = run_m2agent("bench", "kernels", timeout=120)
    assert result.returncode == 1
    assert "needs a CUDA GPU" in result.stderr
