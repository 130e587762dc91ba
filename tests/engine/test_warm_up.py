"""The start-up warm-up's choice of token counts: one eager step per distinct kernel-variant
case (the GPU test `gpu/test_compiles.py` shows a warmed engine builds nothing while serving)."""

from __future__ import annotations

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
