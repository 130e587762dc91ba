"""The LLM API on a tiny checkpoint: stops, lengths, streaming, prompts as text or ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.errors import EngineError
from m2agent.engine.kernels import grouped_moe, reference
from m2agent.engine.llm import RequestOutput
from m2agent.engine.stopping import StopStringMatcher

PROMPT = "]~!b[]~b]user\nWrite a function[e~[\n]~b]ai\n<think>\n"
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


def same(a: RequestOutput, b: RequestOutput) -> bool:
    return (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)


@pytest.fixture(scope="module")
def llm(tiny_m2_checkpoint: Path) -> LLM:
    return LLM(tiny_m2_checkpoint, dtype="float32")


def test_generate_text_and_ids_agree(llm: LLM) -> None:
    (by_text,) = llm.generate([PROMPT], GREEDY)
    (by_ids,) = llm.generate([by_text.prompt_token_ids], GREEDY)
    assert same(by_text, by_ids)
    assert by_ids.num_cached_tokens == 16  # the second run reused the first's prompt blocks
    assert len(by_text.token_ids) == 24
    assert by_text.finish_reason == "length"


def test_stream_yields_the_same_text(llm: LLM) -> None:
    (whole,) = llm.generate([PROMPT], GREEDY)
    assert "".join(llm.stream(PROMPT, GREEDY)) == whole.text


def test_stop_string_cuts_the_text(llm: LLM) -> None:
    (whole,) = llm.generate([PROMPT], GREEDY)
    visible = [c for c in whole.text if c.isprintable() and c != "\ufffd"]
    if len(visible) < 6:
        pytest.skip("greedy text too short to pick a stop string")
    stop = whole.text[whole.text.index(visible[3]) :][:2]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[stop])
    (cut,) = llm.generate([PROMPT], params)
    assert cut.finish_reason == "stop"
    assert cut.text == whole.text[: whole.text.index(stop)]
    assert "".join(llm.stream(PROMPT, params)) == cut.text


def test_stop_token_ids_and_eos(llm: LLM) -> None:
    (whole,) = llm.generate([PROMPT], GREEDY)
    target = whole.token_ids[5]
    first = whole.token_ids.index(target)
    params = SamplingParams(temperature=0, max_tokens=24, stop_token_ids=[target])
    (stopped,) = llm.generate([PROMPT], params)
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == whole.token_ids[: first + 1]


def test_seeded_sampling_reproducible_and_prompts_independent(llm: LLM) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=3, max_tokens=16)
    a = llm.generate([PROMPT, "hello"], params)
    b = llm.generate([PROMPT], params)
    assert same(a[0], b[0])
    assert len(a) == 2


def test_context_limit(tiny_m2_checkpoint: Path) -> None:
    small = LLM(tiny_m2_checkpoint, dtype="float32", max_model_len=10)
    with pytest.raises(EngineError, match="the context holds 10"):
        small.generate([list(range(10))])
    (out,) = small.generate([list(range(7))], SamplingParams(temperature=0, ignore_eos=True))
    assert len(out.token_ids) == 3 and out.finish_reason == "length"


def test_bad_prompts(llm: LLM) -> None:
    with pytest.raises(EngineError, match="empty"):
        llm.generate([""])
    with pytest.raises(EngineError, match="token ids must be integers"):
        llm.generate([[1, 10**9]])


def test_stop_string_matcher_holds_back_partial_matches() -> None:
    matcher = StopStringMatcher(["STOP", "\n\n"])
    assert matcher.add("hello S") == "hello "
    assert matcher.add("T") == ""
    assert matcher.add("x") == "STx"
    assert matcher.add("\n") == ""
    assert matcher.add("\nmore") == ""
    assert matcher.is_stopped
    assert matcher.text == "hello STx"


@pytest.mark.skipif(not grouped_moe.is_available(), reason="torch has no grouped_mm")
def test_grouped_and_dense_moe_match_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    experts, hidden, inter, tokens, top_k = 7, 32, 16, 11, 3
    x = torch.randn(tokens, hidden, generator=generator)
    gate = torch.randn(experts, hidden, generator=generator)
    bias = torch.randn(experts, generator=generator)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=generator)
    w2 = torch.randn(experts, hidden, inter, generator=generator)
    weights, ids = reference.route(x, gate, bias, top_k)
    expected = reference.moe_experts(x, weights, ids, w13, w2)
    torch.testing.assert_close(
        grouped_moe.moe_experts_grouped(x, weights, ids, w13, w2), expected, atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(
        reference.moe_experts_dense(x, weights, ids, w13, w2), expected, atol=1e-4, rtol=1e-4
    )
