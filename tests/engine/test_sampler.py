"""Sampling: seeded reproducibility; top-k / top-p / min-p never sample outside their set."""

from __future__ import annotations

import pytest
import torch

from m2agent.engine.layers.sampler import allowed_mask, candidates, sample, sample_rows
from m2agent.engine.sampling import SamplingParams

PROBS = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.06, 0.04])
LOGITS = PROBS.log()


def draws(params: SamplingParams, n: int = 400, seed: int = 0) -> set[int]:
    generator = torch.Generator().manual_seed(seed)
    return {sample(LOGITS, params, generator) for _ in range(n)}


@pytest.mark.parametrize(
    ("params", "allowed"),
    [
        (SamplingParams(temperature=1.0, top_p=1.0, top_k=2), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.5, top_k=0), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=0.35, top_k=0), {0}),
        (SamplingParams(temperature=1.0, top_p=0.81, top_k=0), {0, 1, 2, 3}),
        (SamplingParams(temperature=1.0, top_p=1.0, top_k=0, min_p=0.3), {0, 1, 2}),
        (SamplingParams(temperature=1.0, top_p=0.9, top_k=3, min_p=0.5), {0, 1}),
        (SamplingParams(temperature=1.0, top_p=1.0, top_k=-1), {0, 1, 2, 3, 4, 5}),
    ],
)
def test_filters_keep_exactly_the_allowed_set(params: SamplingParams, allowed: set[int]) -> None:
    mask = allowed_mask(LOGITS, params)
    assert set(torch.nonzero(mask).flatten().tolist()) == allowed
    assert draws(params) <= allowed


def test_random_logits_never_sample_outside_the_set() -> None:
    generator = torch.Generator().manual_seed(1)
    for trial in range(20):
        logits = torch.randn(300, generator=generator) * 3
        params = SamplingParams(
            temperature=0.7, top_k=int(torch.randint(1, 50, (1,), generator=generator)),
            top_p=0.9, min_p=0.05, seed=trial,
        )  # fmt: skip
        mask = allowed_mask(logits, params)
        # Independent check of top-k: nothing outside the k largest logits.
        assert mask.sum() <= params.top_k
        assert mask[logits.argmax()]
        for _ in range(50):
            assert mask[sample(logits, params, generator)]


def test_greedy_is_argmax() -> None:
    assert sample(LOGITS, SamplingParams(temperature=0), None) == 0


def test_seeded_sampling_is_reproducible() -> None:
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)

    def run(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [sample(LOGITS, params, generator) for _ in range(50)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_high_temperature_flattens_low_sharpens() -> None:
    cold = SamplingParams(temperature=0.01, top_p=1.0, top_k=0)
    assert draws(cold) == {0}
    hot = SamplingParams(temperature=5.0, top_p=1.0, top_k=0)
    assert draws(hot, n=2000) == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1},
        {"temperature": float("nan")},
        {"top_p": 0},
        {"top_p": 1.5},
        {"top_k": -2},
        {"min_p": 2},
        {"max_tokens": 0},
        {"stop": [""]},
        {"stop": "abc"},
        {"stop_token_ids": ["x"]},
    ],
)
def test_invalid_params_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_resolve_fills_defaults_only_where_unset() -> None:
    params = SamplingParams(top_k=5).resolve({"temperature": 1.0, "top_p": 0.95, "top_k": 40})
    assert (params.temperature, params.top_p, params.top_k) == (1.0, 0.95, 5)


def random_params(generator: torch.Generator, vocab: int) -> SamplingParams:
    pick = int(torch.randint(0, 5, (1,), generator=generator))
    top_k = [0, -1, None, 1, int(torch.randint(2, vocab + 5, (1,), generator=generator))][pick]
    return SamplingParams(
        temperature=[0.0, 0.3, 1.0, 1.7][int(torch.randint(0, 4, (1,), generator=generator))],
        top_k=top_k,
        top_p=[1.0, 0.95, 0.5, 0.01][int(torch.randint(0, 4, (1,), generator=generator))],
        min_p=[0.0, 0.0, 0.1][int(torch.randint(0, 3, (1,), generator=generator))],
    )


def test_batched_candidates_are_the_reference_filter_row_by_row() -> None:
    """Each row of a mixed batch keeps exactly allowed_mask's tokens (random logits: no ties),
    with the reference's renormalised probabilities; greedy rows keep their argmax alone."""
    generator = torch.Generator().manual_seed(3)
    for trial in range(30):
        vocab = int(torch.randint(2, 400, (1,), generator=generator))
        batch = int(torch.randint(1, 9, (1,), generator=generator))
        logits = torch.randn(batch, vocab, generator=generator) * 4
        params = [random_params(generator, vocab) for _ in range(batch)]
        ids, probs = candidates(logits, params)
        for row, p in enumerate(params):
            kept = {int(t) for t, q in zip(ids[row], probs[row], strict=True) if q > 0}
            if p.is_greedy:
                assert kept == {int(logits[row].argmax())}, trial
                continue
            mask = allowed_mask(logits[row], p)
            assert kept == set(torch.nonzero(mask).flatten().tolist()), (trial, p)
            assert p.temperature is not None
            expected = torch.softmax(
                (logits[row] / p.temperature).masked_fill(~mask, float("-inf")), dim=-1
            )
            got = torch.zeros(vocab).index_add_(0, ids[row], probs[row])
            torch.testing.assert_close(got, expected)


def test_the_exponential_race_draws_each_token_with_its_probability() -> None:
    params = SamplingParams(temperature=1.0, top_p=1.0, top_k=0)
    generator = torch.Generator().manual_seed(5)
    rows = 4000
    tokens = sample_rows(LOGITS.expand(rows, -1), [params] * rows, [generator] * rows)
    freq = torch.bincount(tokens, minlength=len(PROBS)).float() / rows
    # Binomial standard error at p=0.4 over 4000 draws is 0.0077: 4 of them.
    assert (freq - PROBS).abs().max() < 0.031, freq


def test_a_seeded_row_draws_the_same_alone_or_in_any_batch() -> None:
    mine = SamplingParams(temperature=0.9, top_p=0.95, top_k=40, seed=1)
    other = SamplingParams(temperature=1.3, top_p=1.0, top_k=0, min_p=0.05)
    logits = torch.randn(3, 500, generator=torch.Generator().manual_seed(0)) * 3
    alone_gen = torch.Generator().manual_seed(11)
    batch_gen = torch.Generator().manual_seed(11)
    for step in range(40):
        alone = sample(logits[1], mine, alone_gen)
        greedy = SamplingParams(temperature=0)
        noisy = torch.Generator().manual_seed(step)
        batched = sample_rows(logits, [other, mine, greedy], [noisy, batch_gen, None])
        assert int(batched[1]) == alone, step
        assert int(batched[2]) == int(logits[2].argmax())
