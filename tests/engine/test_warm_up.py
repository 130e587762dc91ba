"""The start-up warm-up's choice of token counts: one eager step per distinct kernel-variant
case (the GPU test `gpu/test_compiles.py` shows a warmed engine builds nothing while serving)."""

from __future__ import annotations

from pathlib import Path

import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.models.tiny import write_tiny_checkpoint
from m2agent.engine.runner.warm_up import SMALL, token_counts


def test_every_small_count_then_the_first_of_each_new_key_then_the_largest() -> None:
    counts = token_counts(500, lambda t: (t > 100, t % 16 == 0))
    assert counts[:SMALL] == list(range(1, SMALL + 1))
    # past SMALL: 65 (odd, <= 100), 80 (a multiple of 16), 101 and 112, then 500 (the largest)
    assert counts[SMALL:] == [65, 80, 101, 112, 500]


def test_a_small_budget_is_every_count_once() -> None:
    assert token_counts(5, lambda t: 0) == [1, 2, 3, 4, 5]
    assert token_counts(SMALL + 1, lambda t: 0) == list(range(1, SMALL + 2))
    assert token_counts(0, lambda t: 0) == []


def test_the_largest_step_is_not_repeated() -> None:
    counts = token_counts(80, lambda t: t % 16 == 0)
    assert counts == [*range(1, SMALL + 2), 80]


def test_warm_up_steps_leave_the_pool_and_the_outputs_as_they_were(tmp_path: Path) -> None:
    """The warm-up's eager steps write KV only to the scratch block: on one rank and on two
    (the step travels to the worker as a `WarmUp` command; both ranks run the same steps, or
    their collectives would not meet), a request before and after gets the same tokens, and
    every pool block is bit for bit what it was."""
    folder = write_tiny_checkpoint(tmp_path / "tiny")
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    prompt = list(range(40, 77))
    for ranks in (1, 2):
        with LLM(folder, dtype="float32", tensor_parallel_size=ranks) as llm:
            before = llm.generate([prompt], params)[0].token_ids
            runner = llm.engine.runner
            pool = runner.k_caches[:, :-1].clone(), runner.v_caches[:, :-1].clone()
            runner.warm_up([1, 2, 17, 40])
            assert torch.equal(runner.k_caches[:, :-1], pool[0])
            assert torch.equal(runner.v_caches[:, :-1], pool[1])
            assert runner.warm_up_note and "4 token counts up to 40" in runner.warm_up_note
            llm.engine.blocks.reset_prefix_cache()
            assert llm.generate([prompt], params)[0].token_ids == before
            llm.engine.blocks.check()
