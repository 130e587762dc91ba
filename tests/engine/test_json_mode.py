"""JSON mode over a real byte-level tokenizer: constrained sampling from random logits always
ends in one JSON object within the budget, and the constraint refuses what it must."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM
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


def run_batch(
    llm: LLM, requests: list[tuple[str, SamplingParams]]
) -> list[tuple[list[int], str, str]]:
    """(tokens, text, finish reason) of each request, all run together in one engine."""
    engine = llm.engine
    ids = [f"batch-{i}" for i in range(len(requests))]
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    texts: dict[str, str] = {rid: "" for rid in ids}
    finish: dict[str, str] = {}
    for rid, (prompt, params) in zip(ids, requests, strict=True):
        engine.add_request(rid, prompt, params)
    while len(finish) < len(ids):
        for delta in engine.step():
            tokens[delta.request_id] += delta.token_ids
            texts[delta.request_id] += delta.text
            if delta.finish_reason is not None:
                finish[delta.request_id] = delta.finish_reason
    return [(tokens[rid], texts[rid], finish[rid]) for rid in ids]


def test_engine_mixes_json_and_plain_requests_in_one_batch(tiny_m2_checkpoint: Path) -> None:
    """A batch of JSON-mode requests (reasoning open, or none: the object from the first token)
    and a plain one: every JSON answer parses, and the plain one is the same as alone."""
    llm = LLM(tiny_m2_checkpoint)
    reasoning = "]~!b[]~b]user\nA cat as JSON[e~[\n]~b]ai\n<think>\n"
    plain_prompt = "def add(a, b):\n    return"
    json_params = SamplingParams(temperature=1.0, max_tokens=40, response_format="json_object")
    plain_params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    alone = llm.generate([plain_prompt], plain_params)[0]
    for seed in range(3):
        seeded = replace(json_params, seed=seed)
        outs = run_batch(
            llm, [(reasoning, seeded), (plain_prompt, plain_params), ("Answer in JSON:", seeded)]
        )
        assert outs[1][0] == alone.token_ids
        for tokens, _, finish in (outs[0], outs[2]):
            assert finish == "stop" and len(tokens) <= 40
        content = outs[0][1].split(markers.THINK_CLOSE, 1)[1]
        assert isinstance(json.loads(content), dict), outs[0][1]
        assert isinstance(json.loads(outs[2][1]), dict), outs[2][1]


def test_bad_response_format_is_refused() -> None:
    with pytest.raises(ValueError, match="response_format"):
        SamplingParams(response_format="json_schema")
