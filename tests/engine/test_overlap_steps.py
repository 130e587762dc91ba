"""Decode steps queued ahead (`overlap_steps`): a step's input tokens come straight from the
device before the host has read them. Everything a request sees must be what the plain,
one-step-at-a-time engine gives: the same deltas (tokens, text, finish reasons) under stop
tokens, stop strings, length limits, seeded sampling, requests arriving and leaving mid-run,
preemption, and the prefix cache afterwards; and the KV pool stays whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.engine import LLMEngine

from .conftest import drive

PROMPTS = [
    "]~!b[]~b]user\nWrite a function that adds two numbers[e~[\n]~b]ai\n<think>\n",
    "]~!b[]~b]user\nFix the failing test[e~[\n]~b]ai\n<think>\n",
    "def add(a, b):\n    return",
    "emoji 😀 and CJK 我们",
]


def both(checkpoint: Path, script: dict[int, list], **options: object) -> tuple[dict, LLMEngine]:
    plain = LLM(checkpoint, overlap_steps=False, **options).engine
    ahead = LLM(checkpoint, overlap_steps=True, **options).engine
    expected, got = drive(plain, script), drive(ahead, script)
    assert got == expected
    assert plain.steps_queued_ahead == 0
    return expected, ahead


@pytest.fixture(scope="module")
def greedy_outputs(tiny_m2_checkpoint: Path) -> list[list[int]]:
    llm = LLM(tiny_m2_checkpoint, overlap_steps=False)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    return [out.token_ids for out in llm.generate(PROMPTS, params)]


def test_stops_of_every_kind_match_the_plain_engine(
    tiny_m2_checkpoint: Path, greedy_outputs: list[list[int]]
) -> None:
    llm = LLM(tiny_m2_checkpoint, overlap_steps=False)
    stop_text = llm.engine.loaded.tokenizer.decode(greedy_outputs[1][6:8])
    script = {
        0: [
            # stops on a token it samples at step ~5
            ("token", PROMPTS[0], SamplingParams(
                temperature=0, max_tokens=30, stop_token_ids=[greedy_outputs[0][5]]
            )),
            # stops on a string its output contains
            ("string", PROMPTS[1], SamplingParams(temperature=0, max_tokens=30, stop=[stop_text])),
            # runs to its length, shorter than the others
            ("length", PROMPTS[2], SamplingParams(temperature=0, max_tokens=3, ignore_eos=True)),
            # one token only: its only step is a prefill
            ("one", PROMPTS[3], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)),
            # seeded sampling draws the same tokens from the same generator
            ("sampled", PROMPTS[3], SamplingParams(
                temperature=1.0, top_p=0.95, top_k=40, seed=7, max_tokens=20, ignore_eos=True
            )),
        ]
    }  # fmt: skip
    expected, ahead = both(tiny_m2_checkpoint, script)
    assert expected["token"][-1].finish_reason == "stop"
    assert expected["token"][-1].token_ids == [greedy_outputs[0][5]]
    assert expected["string"][-1].finish_reason == "stop"
    assert expected["length"][-1].finish_reason == "length"
    assert len(expected["one"]) == 1
    assert ahead.steps_queued_ahead > 10


def test_arrivals_and_aborts_mid_run_match_the_plain_engine(tiny_m2_checkpoint: Path) -> None:
    long = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    sampled = SamplingParams(temperature=0.8, seed=3, max_tokens=12, ignore_eos=True)
    script: dict[int, list] = {
        0: [("a", PROMPTS[0], long), ("b", PROMPTS[1], sampled)],
        4: [("c", PROMPTS[2], long)],  # arrives while a and b decode ahead
        6: ["b"],  # leaves with a step of it queued
        9: [("d", PROMPTS[3], long), "a"],
        13: ["never-added"],
    }
    expected, ahead = both(tiny_m2_checkpoint, script)
    assert not any(d.finished for d in expected["b"])
    assert set(expected) == {"a", "b", "c", "d"}
    assert ahead.steps_queued_ahead > 5


def test_preemption_under_a_small_pool_matches_the_plain_engine(tiny_m2_checkpoint: Path) -> None:
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    probe = LLM(tiny_m2_checkpoint, overlap_steps=False).engine
    longest = max(len(probe.encode(p)) for p in PROMPTS) + params.max_tokens
    options = dict(block_size=4, num_kv_blocks=-(-longest // 4) + 3)
    script = {0: [(f"r{i}", p, params) for i, p in enumerate(PROMPTS)]}
    both(tiny_m2_checkpoint, script, **options)


def test_the_prefix_cache_after_steps_ahead_holds_the_right_keys(tiny_m2_checkpoint: Path) -> None:
    """A request that stops leaves its blocks in the prefix cache while a step of it is still
    queued: the next turn, reusing them, gets what an engine without the cache computes."""
    params = SamplingParams(temperature=0, max_tokens=21, ignore_eos=True)
    cached = LLM(tiny_m2_checkpoint, block_size=4, overlap_steps=True)
    plain = LLM(tiny_m2_checkpoint, block_size=4, enable_prefix_caching=False, overlap_steps=False)
    (first,) = cached.generate([PROMPTS[0]], params)
    follow = first.prompt_token_ids + first.token_ids + cached.engine.encode("[e~[\n]~b]tool\nok")
    (hit,) = cached.generate([follow], params)
    (miss,) = plain.generate([follow], params)
    assert hit.num_cached_tokens >= (len(first.prompt_token_ids) + 20) // 4 * 4
    assert hit.token_ids == miss.token_ids
    assert cached.engine.steps_queued_ahead > 30


def test_a_step_is_queued_ahead_only_where_it_can_be_used(
    tiny_m2_checkpoint: Path, greedy_outputs: list[list[int]]
) -> None:
    engine = LLM(tiny_m2_checkpoint, overlap_steps=True).engine
    # Ten tokens: one from the prefill, one from a scheduled decode step, eight from steps
    # queued ahead; none after the last (its length is known).
    engine.add_request(
        "ten", PROMPTS[2], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    )
    tokens = [t for _ in range(10) for d in engine.step() for t in d.token_ids]
    assert tokens == greedy_outputs[2][:10]
    assert engine.steps_queued_ahead == 8
    assert not engine.has_unfinished_requests()
    # A stop token is only known once read: the step queued after it is dropped, so the next
    # request's first step is its own.
    stop = SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[greedy_outputs[0][5]])
    engine.add_request("stops", PROMPTS[0], stop)
    while engine.has_unfinished_requests():
        engine.step()
    engine.add_request("next", PROMPTS[3], SamplingParams(temperature=0, max_tokens=2))
    (delta,) = engine.step()
    assert delta.request_id == "next" and delta.num_output_tokens == 1
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks - len(
        engine.scheduler.running[0].block_table
    )
