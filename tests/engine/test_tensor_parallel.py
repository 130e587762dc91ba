"""Tensor parallelism on CPU: two real processes joined over gloo, each holding half of every
layer. The split model must compute what the whole one does (transformers as the oracle),
sample the same tokens, and refuse shapes that do not split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.errors import CheckpointError, ConfigError, EngineError
from m2agent.engine.layers.loading import Slice, copy_slice
from m2agent.engine.layers.parallel import TensorParallel
from m2agent.engine.models.tiny import TinySpec, write_tiny_checkpoint

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 17, 3, 99, 250, 7, 7, 1], list(range(40, 77))]


def test_split_model_matches_transformers(transformers_checkpoints: dict) -> None:
    folder = transformers_checkpoints["gqa2-e6-top3-published"]
    reference = transformers.MiniMaxM2ForCausalLM.from_pretrained(
        str(folder).removesuffix("-published"), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    with LLM(folder, dtype="float32", tensor_parallel_size=2) as llm:
        for ids in PROMPTS:
            ours = llm.prompt_logits(ids)
            with torch.inference_mode():
                theirs = reference(torch.tensor([ids])).logits[0].float()
            torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)


def test_split_generation_equals_single(tmp_path: Path) -> None:
    """Greedy and seeded sampling, several sequences batched with chunked prefill and a
    vocabulary (511) that does not split evenly: the last rank's padding must never win."""
    folder = write_tiny_checkpoint(tmp_path / "odd-vocab", TinySpec(vocab=511))
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=7, max_tokens=24, ignore_eos=True)
    options = dict(dtype="float32", max_num_batched_tokens=16)
    single = LLM(folder, **options)
    expected = [single.generate(PROMPTS, p) for p in (greedy, seeded)]
    logits = single.prompt_logits(PROMPTS[1])
    with LLM(folder, tensor_parallel_size=2, **options) as split:
        got = [split.generate(PROMPTS, p) for p in (greedy, seeded)]
        torch.testing.assert_close(split.prompt_logits(PROMPTS[1]), logits, atol=1e-5, rtol=1e-5)
    for want, have in zip(expected, got, strict=True):
        assert [r.token_ids for r in have] == [r.token_ids for r in want]
    assert logits.shape[-1] == 511


def test_split_fp8_checkpoint_equals_single(tmp_path: Path) -> None:
    """FP8 block scales are cut along with their weights (one 128-block per rank here)."""
    spec = TinySpec(hidden=256, heads=4, kv_heads=2, head_dim=128, rotary_dim=64, intermediate=256)
    folder = write_tiny_checkpoint(tmp_path / "fp8", spec, fp8=True)
    single = LLM(folder, dtype="float32")
    with LLM(folder, dtype="float32", tensor_parallel_size=2) as split:
        for ids in PROMPTS:
            torch.testing.assert_close(
                split.prompt_logits(ids), single.prompt_logits(ids), atol=1e-4, rtol=1e-4
            )


def test_one_tensor_parallel_engine_per_process(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "tiny")
    with (
        LLM(folder, tensor_parallel_size=2),
        pytest.raises(EngineError, match="already running in this process"),
    ):
        LLM(folder, tensor_parallel_size=2)
    with LLM(folder, tensor_parallel_size=2) as again:  # closed: a new one can start
        assert again.generate([[1, 2, 3]], SamplingParams(max_tokens=2))[0].token_ids


def test_shapes_that_do_not_split_are_refused_before_any_process(tmp_path: Path) -> None:
    folder = write_tiny_checkpoint(tmp_path / "tiny")  # 4 heads, 2 KV heads
    with pytest.raises(ConfigError, match=r"num_attention_heads \(4\) is not divisible by .* 3"):
        LLM(folder, tensor_parallel_size=3)
    with pytest.raises(ConfigError, match=r"num_key_value_heads \(2\) is not divisible .* 4"):
        LLM(folder, tensor_parallel_size=4)
    fp8 = write_tiny_checkpoint(
        tmp_path / "fp8",
        TinySpec(hidden=256, heads=4, kv_heads=2, head_dim=128, rotary_dim=64, intermediate=128),
        fp8=True,
    )
    with pytest.raises(ConfigError, match="FP8 block size 128"):  # pure TP asked for
        LLM(fp8, tensor_parallel_size=2, expert_parallel_size=1)


def test_slices_of_checkpoint_tensors() -> None:
    full = torch.arange(10.0).reshape(5, 2)
    tail = Slice.padded(0, 5, TensorParallel(rank=1, size=2))
    assert tail == Slice(0, 3, 3, 5)
    target = torch.full((3, 2), -1.0)
    copy_slice(target, full, tail)
    assert target.tolist() == [[6.0, 7.0], [8.0, 9.0], [0.0, 0.0]]  # padding is zero
    with pytest.raises(CheckpointError, match="expected 5 along dimension 0"):
        copy_slice(target, torch.zeros(6, 2), tail)
    even = Slice.of_rank(1, 256, TensorParallel(rank=1, size=2), "w")
    assert even is not None and even.in_blocks(128, "w") == Slice(1, 1, 1, 2)
    with pytest.raises(ConfigError, match="FP8 block size 128"):
        Slice(0, 64, 64, 128).in_blocks(128, "w")
    assert Slice.of_rank(0, 7, TensorParallel(), "w") is None
