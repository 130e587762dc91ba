"""Expert parallelism on CPU: real processes joined over gloo, each holding whole experts (or,
with more ranks than expert groups, a slice of each of its experts), attention split as under
tensor parallelism. The split model must sample what one process does, read only its slices
of the checkpoint, and stop with the reason when a rank dies."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.config import EngineConfig
from m2agent.engine.errors import ConfigError
from m2agent.engine.layers.moe import Experts
from m2agent.engine.layers.parallel import TensorParallel
from m2agent.engine.loader import load_model
from m2agent.engine.model_config import load_model_config
from m2agent.engine.models.checkpoint import iter_tensors, new_progress
from m2agent.engine.models.load_progress import LoadProgress
from m2agent.engine.models.tiny import TinySpec, write_tiny_checkpoint
from m2agent.engine.models.weights import load_weights
from m2agent.engine.runner.workers import default_expert_parallel

PROMPTS = [[5, 17, 3, 99, 250, 7, 7, 1], list(range(40, 77)), [300, 2, 11]]
# Kept short: every engine here is several processes on CI's two cores. (Sampling is rank 0's
# alone, as under TP: test_tensor_parallel.py covers seeded sampling across ranks.)
GREEDY = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
# FP8 experts whose intermediate size (128) is one block: tensor parallelism cannot cut them.
FP8_WIDE = TinySpec(hidden=256, heads=4, kv_heads=2, head_dim=128, rotary_dim=64, intermediate=128)


def outputs(llm: LLM, prompts: list[list[int]] = PROMPTS) -> list[list[int]]:
    return [r.token_ids for r in llm.generate(prompts, GREEDY)]


def test_ep2_equals_one_process(tmp_path: Path) -> None:
    """bf16 checkpoint, fp32 compute, batched with chunked prefill: every token's experts are
    split between the two ranks and combined by the layer's all-reduce."""
    folder = write_tiny_checkpoint(tmp_path / "tiny", TinySpec())
    options = dict(dtype="float32", max_num_batched_tokens=16)
    single = LLM(folder, **options)
    expected, logits = outputs(single), single.prompt_logits(PROMPTS[1])
    with LLM(folder, expert_parallel_size=2, **options) as split:
        tp = split.engine.runner.tp
        assert (tp.size, tp.expert_parallel_size) == (2, 2)
        experts = [m for m in split.model.modules() if isinstance(m, Experts)]
        assert experts[0].owned == range(0, 4) and experts[0].w13_weight.shape[0] == 4
        assert outputs(split) == expected
        torch.testing.assert_close(split.prompt_logits(PROMPTS[1]), logits, atol=1e-5, rtol=1e-5)


def test_fp8_tp2_with_ep2_equals_one_process(tmp_path: Path) -> None:
    """FP8 experts too narrow for TP2 on 128-blocks: the default layout for two ranks is
    attention TP2 + experts EP2 (what --tp 2 --ep 2 asks for explicitly)."""
    folder = write_tiny_checkpoint(tmp_path / "fp8", FP8_WIDE, fp8=True)
    assert default_expert_parallel(load_model_config(folder), 2) == 2
    single = LLM(folder, dtype="float32")
    expected = outputs(single, PROMPTS[:2])
    logits = single.prompt_logits(PROMPTS[0])
    with LLM(folder, dtype="float32", tensor_parallel_size=2) as split:
        assert split.engine.runner.tp.expert_parallel_size == 2  # picked by default
        assert outputs(split, PROMPTS[:2]) == expected
        torch.testing.assert_close(split.prompt_logits(PROMPTS[0]), logits, atol=1e-4, rtol=1e-4)


def test_four_ranks_two_expert_groups_equal_one_process(tmp_path: Path) -> None:
    """TP4 attention, experts in 2 groups of 2 ranks that each split their experts' width."""
    folder = write_tiny_checkpoint(tmp_path / "kv4", TinySpec(kv_heads=4))
    single = LLM(folder, dtype="float32")
    expected = outputs(single, PROMPTS[:2])
    with LLM(folder, dtype="float32", tensor_parallel_size=4, expert_parallel_size=2) as split:
        experts = next(m for m in split.model.modules() if isinstance(m, Experts))
        assert experts.owned == range(0, 4)
        assert experts.w13_weight.shape == (4, 2 * 32 // 2, 64)  # half of each expert's width
        assert outputs(split, PROMPTS[:2]) == expected


def test_each_rank_reads_only_its_slices(tmp_path: Path) -> None:
    """Loading rank 1 of TP2+EP2 (no process group is needed to load) reads exactly the bytes
    of its parameters: half the attention and vocabulary, half the experts, whole norms and
    router; the experts it holds are the second half of the checkpoint's."""
    folder = write_tiny_checkpoint(tmp_path / "fp8", FP8_WIDE, fp8=True)
    whole = load_model(folder, "cpu", "bfloat16", "auto").model
    tp = TensorParallel(rank=1, size=2, expert_parallel_size=2)
    part = load_model(folder, "cpu", "bfloat16", "dummy", tp=tp).model  # shapes of rank 1
    progress = new_progress(folder, None)
    load_weights(part, iter_tensors(folder, progress), where=str(folder))
    summary = progress.finish()
    # bf16 model: every parameter has its checkpoint dtype (fp8 + fp32 scales, fp32 router).
    assert summary.bytes_read == sum(p.numel() * p.element_size() for p in part.parameters())
    assert summary.bytes_read < 0.6 * summary.checkpoint_bytes
    assert summary.num_shards == 2
    mine = next(m for m in part.modules() if isinstance(m, Experts))
    full = next(m for m in whole.modules() if isinstance(m, Experts))
    assert mine.owned == range(4, 8)
    assert torch.equal(mine.w13_weight, full.w13_weight[4:])
    assert torch.equal(mine.w2_weight_scale_inv, full.w2_weight_scale_inv[4:])


def test_progress_display_counts_shards_bytes_and_rate() -> None:
    now = [0.0]
    stream = io.StringIO()  # not a terminal: a line every `every_s`, and one at the end
    progress = LoadProgress(4, 8_000_000_000, stream, clock=lambda: now[0], every_s=1.0)
    for _ in range(4):
        now[0] += 0.5
        progress.add_bytes(1_000_000_000)
        progress.shard_done()
    summary = progress.finish()
    assert (summary.num_shards, summary.bytes_read, summary.seconds) == (4, 4e9, 2.0)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "loading weights: shard 1/4, 2.00 GB read (checkpoint 8.00 GB), 2.00 GB/s"
    assert lines[-1] == (
        "loading weights: read 4.00 GB of the checkpoint's 8.00 GB from 4 shards in 2.0 s "
        "(2.00 GB/s)"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_line_redrawn() -> None:
    now = [0.0]
    stream = Terminal()
    progress = LoadProgress(2, 2_000_000_000, stream, clock=lambda: now[0])
    for _ in range(2):
        now[0] += 1.0
        progress.add_bytes(500_000_000)
        progress.shard_done()
    progress.finish()
    text = stream.getvalue()
    assert "\n" not in text.removesuffix("\n")  # redrawn in place, ended once
    assert text.startswith("\r\x1b[Kloading weights: shard 0/2, 0.50 GB read")
    assert text.endswith("from 2 shards in 2.0 s (0.50 GB/s)\n")


def test_default_layout_per_gpu_count() -> None:
    """M2 in FP8: TP cuts the 1536-wide experts on 128-blocks for 2 and 4 ranks, not for 8."""
    m2 = load_model_config(Path(__file__).parents[2] / "engine/configs/minimax-m2.json")
    assert m2.fp8_for("block_sparse_moe.experts") is not None
    assert [default_expert_parallel(m2, n) for n in (1, 2, 4, 8)] == [1, 1, 1, 8]


def test_layouts_that_cannot_work_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"expert_parallel_size \(3\) must divide"):
        EngineConfig(model=tmp_path, tensor_parallel_size=4, expert_parallel_size=3)
    assert EngineConfig(model=tmp_path, expert_parallel_size=2).num_ranks == 2
    with pytest.raises(ConfigError, match=r"num_local_experts \(8\) is not divisible .* 3"):
        TensorParallel(0, 3, None, 3).owned_experts(8)
    with pytest.raises(ConfigError, match="must divide the number of ranks"):
        TensorParallel(0, 4, None, 3)


DIE_SCRIPT = """
import os, signal, sys, time
from m2agent.engine import LLM, SamplingParams
llm = LLM(sys.argv[1], expert_parallel_size=2)
params = SamplingParams(max_tokens=4, ignore_eos=True)
llm.generate([[1, 2, 3]], params)
print(llm.engine.workers.pids[0], flush=True)
if sys.argv[2] == "bad-command":
    llm.engine.workers.announce("allocate_kv")  # a name, not a typed command
while True:
    llm.generate([[1, 2, 3]], params)
"""


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("kill", r"rank 1 exited \(killed by SIGKILL\)"),
        ("bad-command", r"rank 1 exited \(code 1\): not a runner command: 'allocate_kv'"),
    ],
)
def test_a_dying_worker_ends_the_engine_with_its_reason(
    tmp_path: Path, how: str, reason: str
) -> None:
    folder = write_tiny_checkpoint(tmp_path / "tiny", TinySpec())
    rank0 = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DIE_SCRIPT), str(folder), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert rank0.stdout is not None
        worker_pid = int(rank0.stdout.readline())
        if how == "kill":
            time.sleep(0.5)  # mid-generation
            subprocess.run(["kill", "-KILL", str(worker_pid)], check=True)
        _, stderr = rank0.communicate(timeout=60)
    finally:
        rank0.kill()
    assert rank0.returncode == 1, stderr
    assert re.search(reason, stderr), stderr
    assert "the other ranks cannot go on without it" in stderr


def test_dummy_weights_route_alike_on_every_rank(tmp_path: Path) -> None:
    """Full-size dummy runs build each rank's slice on its own device: the router (held whole by
    every rank) must be the same everywhere, or ranks would disagree on each token's experts."""
    folder = write_tiny_checkpoint(tmp_path / "tiny", TinySpec())
    ranks = [
        load_model(folder, "cpu", "float32", "dummy", seed=5, tp=TensorParallel(r, 2, None, 2))
        for r in (0, 1)
    ]
    params = [dict(loaded.model.named_parameters()) for loaded in ranks]
    gate = "model.layers.1.block_sparse_moe.gate.weight"
    assert torch.equal(params[0][gate], params[1][gate])
    assert params[0][gate].std() > 0
    q = "model.layers.1.self_attn.q_proj.weight"
    assert not torch.equal(params[0][q], params[1][q])  # each rank's own slice


def test_serve_takes_an_expert_parallel_size() -> None:
    from m2agent.engine.server.__main__ import build_parser

    args = build_parser().parse_args(["--model", "m", "--tp", "8", "--ep", "8"])
    assert (args.tp, args.ep) == (8, 8)
    assert build_parser().parse_args(["--model", "m"]).ep is None  # the default layout
