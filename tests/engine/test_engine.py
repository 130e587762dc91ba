"""The serving engine on CPU: paged attention, prefix cache, chunked prefill, preemption and
abort all give the same tokens as the plain path, and leave the KV pool whole."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.kernels.reference import causal_attention, paged_attention

PROMPTS = [
    "]~!b[]~b]user\nWrite a function that adds two numbers[e~[\n]~b]ai\n<think>\n",
    "]~!b[]~b]user\nFix the failing test[e~[\n]~b]ai\n<think>\n",
    "def add(a, b):\n    return",
    "emoji 😀 and CJK 我们",
]
GREEDY = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)


def run(llm: LLM, prompts: list, params: SamplingParams = GREEDY) -> list[list[int]]:
    return [out.token_ids for out in llm.generate(prompts, params)]


@pytest.fixture(scope="module")
def reference_tokens(tiny_m2_checkpoint: Path) -> list[list[int]]:
    """Each prompt alone, no prefix cache, no chunking."""
    llm = LLM(tiny_m2_checkpoint, enable_prefix_caching=False)
    return [run(llm, [p])[0] for p in PROMPTS]


@pytest.mark.parametrize("seed", range(4))
def test_paged_attention_equals_contiguous(seed: int) -> None:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    heads, kv_heads, dim, block = 4, 2, 8, 4
    num_blocks = 40
    k_cache = torch.randn(num_blocks, block, kv_heads, dim, generator=gen)
    v_cache = torch.randn(num_blocks, block, kv_heads, dim, generator=gen)
    free = list(range(num_blocks))
    rng.shuffle(free)
    query_lens, seq_lens, tables, contiguous = [], [], [], []
    for _ in range(rng.randint(1, 4)):
        length = rng.randint(1, 30)
        new = rng.randint(1, length)
        table = [free.pop() for _ in range(-(-length // block))]
        keys = k_cache[table].flatten(0, 1)[:length]
        values = v_cache[table].flatten(0, 1)[:length]
        query_lens.append(new)
        seq_lens.append(length)
        tables.append(table)
        contiguous.append((keys, values))
    q = torch.randn(sum(query_lens), heads, dim, generator=gen)
    got = paged_attention(q, k_cache, v_cache, query_lens, seq_lens, tables, 0.3)
    start = 0
    for n, length, (keys, values) in zip(query_lens, seq_lens, contiguous, strict=True):
        expected = causal_attention(q[start : start + n], keys, values, length - n, 0.3)
        torch.testing.assert_close(got[start : start + n], expected)
        start += n


def test_batched_equals_one_at_a_time(tiny_m2_checkpoint: Path, reference_tokens: list) -> None:
    llm = LLM(tiny_m2_checkpoint, enable_prefix_caching=False)
    assert run(llm, PROMPTS) == reference_tokens


def test_chunked_prefill_equals_unchunked(tiny_m2_checkpoint: Path, reference_tokens: list) -> None:
    llm = LLM(tiny_m2_checkpoint, max_num_batched_tokens=5, enable_prefix_caching=False)
    assert run(llm, PROMPTS) == reference_tokens
    whole = LLM(tiny_m2_checkpoint).prompt_logits(llm.engine.encode(PROMPTS[0]))
    assert whole.shape[0] == len(llm.engine.encode(PROMPTS[0]))


def test_prefix_cache_hit_equals_miss(tiny_m2_checkpoint: Path) -> None:
    cached = LLM(tiny_m2_checkpoint, block_size=4)
    plain = LLM(tiny_m2_checkpoint, block_size=4, enable_prefix_caching=False)
    # An agent turn: the next prompt is the previous prompt, the model's output, and more.
    (first,) = cached.generate([PROMPTS[0]], GREEDY)
    follow = first.prompt_token_ids + first.token_ids + cached.engine.encode("[e~[\n]~b]tool\nok")
    (hit,) = cached.generate([follow], GREEDY)
    (miss,) = plain.generate([follow], GREEDY)
    assert hit.num_cached_tokens >= len(first.prompt_token_ids) // 4 * 4
    assert miss.num_cached_tokens == 0
    assert hit.token_ids == miss.token_ids
    torch.testing.assert_close(cached.prompt_logits(follow), plain.prompt_logits(follow))


def test_preemption_and_abort_leave_the_pool_whole(
    tiny_m2_checkpoint: Path, reference_tokens: list
) -> None:
    # A pool a little larger than the longest sequence: all five cannot run at once.
    probe = LLM(tiny_m2_checkpoint)
    longest = max(len(probe.engine.encode(p)) for p in PROMPTS) + GREEDY.max_tokens
    blocks = -(-longest // 4) + 3
    llm = LLM(tiny_m2_checkpoint, block_size=4, num_kv_blocks=blocks, enable_prefix_caching=False)
    engine = llm.engine
    for i, prompt in enumerate(PROMPTS):
        engine.add_request(f"r{i}", prompt, GREEDY)
    engine.add_request("doomed", PROMPTS[0], GREEDY)
    outputs: dict[str, list[int]] = {}
    preempted = 0
    steps = 0
    while engine.has_unfinished_requests():
        steps += 1
        if steps == 3:
            assert engine.abort("doomed")
        before = len(engine.scheduler.waiting)
        for delta in engine.step():
            outputs.setdefault(delta.request_id, []).extend(delta.token_ids)
        preempted += max(0, len(engine.scheduler.waiting) - before)
        engine.blocks.check()
    assert preempted > 0
    assert [outputs[f"r{i}"] for i in range(len(PROMPTS))] == reference_tokens
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert not engine.abort("doomed")


def test_seeded_sampling_is_independent_of_the_batch(tiny_m2_checkpoint: Path) -> None:
    llm = LLM(tiny_m2_checkpoint)
    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=40, seed=11, max_tokens=12)
    alone = run(llm, [PROMPTS[1]], params)[0]
    together = run(llm, [PROMPTS[0], PROMPTS[1], PROMPTS[2]], params)[1]
    assert alone == together
