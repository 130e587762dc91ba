"""JSON mode over a real byte-level tokenizer: constrained sampling from random logits always
ends in one JSON object within the budget, and the constraint refuses what it must."""

from __future__ import annotations

import json

import pytest
import torch

from m2agent.engine.json_mode import JsonObjectConstraint, TokenTexts, starts_in_reasoning
from m2agent.engine.layers.sampler import sample_constrained
from m2agent.engine.models.tiny import build_tokenizer
from m2agent.engine.protocol import markers
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.tokenizer import Tokenizer

VOCAB = 512  # the tiny model's vocabulary: ids past the tokenizer's have no text


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(build_tokenizer())


@pytest.fixture(scope="module")
def texts(tokenizer: Tokenizer) -> TokenTexts:
    table = tokenizer.token_bytes()
    return TokenTexts.of([*table, *[None] * (VOCAB - len(table))])


def constraint_for(
    tokenizer: Tokenizer, texts: TokenTexts, budget: int, in_reasoning: bool = True
) -> JsonObjectConstraint:
    eos = tokenizer.token_to_id(markers.END_OF_TURN)
    assert eos is not None
    return JsonObjectConstraint(
        texts,
        budget=budget,
        in_reasoning=in_reasoning,
        think_close=tokenizer.token_to_id(markers.THINK_CLOSE),
        banned=[eos, 7],  # 7: an ordinary token made a stop token
    )


def test_token_bytes_match_the_decoder(tokenizer: Tokenizer) -> None:
    table = tokenizer.token_bytes()
    assert table[tokenizer.token_to_id(markers.THINK_CLOSE) or 0] is None
    whole = [i for i, b in enumerate(table) if b is not None]
    joined = b"".join(table[i] or b"" for i in whole)
    assert joined.decode("utf-8", "replace") == tokenizer.decode(whole)


@pytest.mark.parametrize("budget", [3, 4, 6, 12, 40, 150])
@pytest.mark.parametrize("temperature", [0.0, 1.0, 3.0])
def test_random_logits_always_give_one_json_object(
    tokenizer: Tokenizer, texts: TokenTexts, budget: int, temperature: float
) -> None:
    params = SamplingParams(temperature=temperature, top_p=0.95, top_k=40)
    think_close = tokenizer.token_to_id(markers.THINK_CLOSE)
    for seed in range(4):
        generator = torch.Generator().manual_seed(seed)
        constraint = constraint_for(tokenizer, texts, budget)
        out: list[int] = []
        while not constraint.complete:
            assert len(out) < budget, "ran past the budget"
            logits = torch.randn(VOCAB, generator=generator) * 4
            if seed % 2:  # favour the reasoning's end, so the JSON gets room
                logits[think_close or 0] += 8
            token = sample_constrained(logits, params, generator, constraint)
            assert token not in (7, tokenizer.token_to_id(markers.END_OF_TURN))
            constraint.advance(token)
            out.append(token)
        assert think_close in out
        content = b"".join(texts.text(t) or b"" for t in out[out.index(think_close) + 1 :])
        assert isinstance(json.loads(content.decode("utf-8")), dict), content


def test_the_reasoning_is_free_until_the_budget_needs_closing(
    tokenizer: Tokenizer, texts: TokenTexts
) -> None:
    think_close = tokenizer.token_to_id(markers.THINK_CLOSE)
    constraint = constraint_for(tokenizer, texts, 4)
    assert constraint.allows(5) and constraint.allows(think_close or 0)
    constraint.advance(5)
    assert not constraint.allows(5)  # 3 left: `</think>` `{` `}` exactly
    assert constraint.allowed_ids() == [think_close]


def test_json_refuses_bad_text_and_keeps_the_budget(
    tokenizer: Tokenizer, texts: TokenTexts
) -> None:
    constraint = constraint_for(tokenizer, texts, 3, in_reasoning=False)
    brace, close, quote = (tokenizer.encode(c)[0] for c in '{}"')
    assert not constraint.allows(close) and not constraint.allows(quote)
    assert constraint.allows(brace)
    constraint.advance(brace)
    assert not constraint.allows(quote)  # `"` would need `":0}` and only 2 tokens are left
    allowed = constraint.allowed_ids()
    assert close in allowed
    assert all((texts.text(t) or b"").strip() in (b"", b"}") for t in allowed), allowed
    with pytest.raises(ValueError, match="breaks"):
        constraint.advance(quote)
    constraint.advance(close)
    assert constraint.complete and not constraint.allowed_ids()


def test_too_small_a_budget_is_refused(tokenizer: Tokenizer, texts: TokenTexts) -> None:
    with pytest.raises(ValueError, match="at least 3"):
        constraint_for(tokenizer, texts, 2)


def test_reasoning_is_open_only_after_an_unclosed_think() -> None:
    assert starts_in_reasoning([1, 9, 2], 9, 10)
    assert not starts_in_reasoning([9, 2, 10, 3], 9, 10)
    assert not starts_in_reasoning([1, 2], 9, 10)
    assert not starts_in_reasoning([9], None, 10)


def test_a_vocabulary_that_cannot_close_the_object_gives_up_instead_of_failing() -> None:
    texts = TokenTexts.of([b"{", b"a", b'"', None])  # no `}` anywhere
    constraint = JsonObjectConstraint(texts, budget=4, in_reasoning=False, think_close=3)
    constraint.advance(0)
    logits = torch.tensor([0.0, 5.0, 1.0, 0.0])
    token = sample_constrained(logits, SamplingParams(temperature=0), None, constraint)
    assert token == 1 and constraint.given_up and not constraint.complete
    constraint.advance(token)  # runs on unconstrained


def test_reasoning_scan_near_the_budget_offers_only_its_end(
    tokenizer: Tokenizer, texts: TokenTexts
) -> None:
    constraint = constraint_for(tokenizer, texts, 4)
    assert len(constraint.allowed_ids()) == len(texts.texts) - 2  # all but the two banned
    constraint.advance(5)
    assert constraint.allowed_ids() == [tokenizer.token_to_id(markers.THINK_CLOSE)]
