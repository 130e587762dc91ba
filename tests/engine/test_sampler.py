"""Sampling: seeded reproducibility; top-k / top-p / min-p never sample outside their set."""

from __future__ import annotations

import pytest
import torch

from m2agent.engine.layers.sampler import allowed_mask, sample
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
