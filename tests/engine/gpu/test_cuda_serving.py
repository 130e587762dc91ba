"""The serving engine's GPU paths: the Triton paged decode kernel against the reference, CUDA
graph replay against eager steps, prefix-cache hits against misses."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM
from m2agent.engine.kernels import reference

from ..conftest import drive
from .conftest import GREEDY, PROMPTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "page"),
    [(48, 8, 128, 16), (4, 2, 16, 16), (8, 8, 64, 32), (6, 1, 128, 16)],
)
def test_triton_decode_attention_matches_reference(
    dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, page: int
) -> None:
    from m2agent.engine.kernels.paged_attention_triton import paged_decode_attention

    rng = random.Random(heads * head_dim + page)
    gen = torch.Generator(device="cuda").manual_seed(0)
    num_blocks = 400
    k_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=gen, device="cuda").to(
        dtype
    )
    v_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=gen, device="cuda").to(
        dtype
    )
    for batch in (1, 5, 17):
        free = list(range(num_blocks))
        rng.shuffle(free)
        lengths = [
            rng.choice([1, page - 1, page, page + 1, rng.randint(2, 700)]) for _ in range(batch)
        ]
        tables = [[free.pop() for _ in range(-(-n // page))] for n in lengths]
        width = max(len(t) for t in tables)
        block_tables = torch.tensor(
            [t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda"
        )
        q = torch.randn(batch, heads, head_dim, generator=gen, device="cuda").to(dtype)
        seq_lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
        got = paged_decode_attention(q, k_cache, v_cache, block_tables, seq_lens, head_dim**-0.5)
        expected = reference.paged_attention(
            q.float(),
            k_cache.float(),
            v_cache.float(),
            [1] * batch,
            lengths,
            tables,
            head_dim**-0.5,
        )
        tolerance = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)


def test_graph_replay_equals_eager(tiny_m2_checkpoint: Path) -> None:
    graphs = LLM(tiny_m2_checkpoint, device="cuda", dtype="float32", max_num_seqs=8)
    eager = LLM(tiny_m2_checkpoint, device="cuda", dtype="float32", cuda_graphs=False)
    assert graphs.engine.runner.graphs is not None
    assert eager.engine.runner.graphs is None
    a = [o.token_ids for o in graphs.generate(PROMPTS, GREEDY)]  # batch of 3: padded to 4
    b = [o.token_ids for o in eager.generate(PROMPTS, GREEDY)]
    assert a == b
    single = [graphs.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
    assert single == b


def test_prefix_hit_equals_miss_on_cuda(tiny_m2_checkpoint: Path) -> None:
    cached = LLM(tiny_m2_checkpoint, device="cuda", dtype="float32", block_size=4)
    plain = LLM(tiny_m2_checkpoint, device="cuda", dtype="float32", enable_prefix_caching=False)
    (first,) = cached.generate([PROMPTS[0]], GREEDY)
    follow = first.prompt_token_ids + first.token_ids + cached.engine.encode("[e~[\n]~b]tool\nok")
    (hit,) = cached.generate([follow], GREEDY)
    (miss,) = plain.generate([follow], GREEDY)
    assert hit.num_cached_tokens > 0
    assert hit.token_ids == miss.token_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "page"), [(48, 8, 128, 16), (4, 2, 16, 16)]
)
def test_triton_prefill_attention_matches_reference(
    dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int, page: int
) -> None:
    from m2agent.engine.kernels.prefill_attention_triton import paged_prefill_attention

    rng = random.Random(heads + page)
    gen = torch.Generator(device="cuda").manual_seed(1)
    num_blocks = 600
    k_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=gen, device="cuda").to(
        dtype
    )
    v_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=gen, device="cuda").to(
        dtype
    )
    free = list(range(num_blocks))
    rng.shuffle(free)
    # Fresh prompts, chunks after a cached prefix, decodes: all in one batch.
    shapes = [(300, 300), (1, 57), (100, 900), (17, 17), (1, 1), (65, 130)]
    query_lens = [q for q, _ in shapes]
    seq_lens = [s for _, s in shapes]
    tables = [[free.pop() for _ in range(-(-s // page))] for s in seq_lens]
    width = max(len(t) for t in tables)
    block_tables = torch.tensor(
        [t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda"
    )
    starts = [0]
    for n in query_lens:
        starts.append(starts[-1] + n)
    q = torch.randn(starts[-1], heads, head_dim, generator=gen, device="cuda").to(dtype)
    got = paged_prefill_attention(
        q, k_cache, v_cache, block_tables,
        torch.tensor(seq_lens, dtype=torch.int32, device="cuda"),
        torch.tensor(starts, dtype=torch.int32, device="cuda"), max(query_lens), head_dim**-0.5,
    )  # fmt: skip
    expected = reference.paged_attention(
        q.float(), k_cache.float(), v_cache.float(), query_lens, seq_lens, tables, head_dim**-0.5
    )
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)


def test_steps_queued_ahead_equal_plain_steps_on_cuda(tiny_m2_checkpoint: Path) -> None:
    """Decode steps queued before the host has their input tokens (graph replays fed from the
    device) give every request the deltas of one-step-at-a-time decoding: greedy and seeded
    sampling, stop tokens and lengths, a request arriving and one leaving mid-run. In fp32:
    the step queued after a request stops still holds its row, so that step runs a larger
    graph, whose split-KV attention rounds differently; in fp32 that cannot move a token (in
    bf16 it can, as any change of batch composition can: see the next test)."""
    from m2agent.engine import SamplingParams

    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    plain = LLM(tiny_m2_checkpoint, device="cuda", dtype="float32", overlap_steps=False)
    stop_at = plain.generate([PROMPTS[0]], greedy)[0].token_ids[9]
    plain.engine.blocks.reset_prefix_cache()  # both engines start cold: equal cached counts
    stop = SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[stop_at])
    sampled = SamplingParams(
        temperature=1.0, top_p=0.95, top_k=40, seed=5, max_tokens=30, ignore_eos=True
    )
    late = SamplingParams(temperature=0.7, seed=1, max_tokens=25, ignore_eos=True)
    script: dict[int, list] = {
        0: [("greedy", PROMPTS[0], greedy), ("stop", PROMPTS[0], stop)],
        1: [("sampled", PROMPTS[1], sampled)],
        7: [("late", PROMPTS[2], late)],
        12: ["greedy"],
    }
    ahead = LLM(tiny_m2_checkpoint, device="cuda", dtype="float32")
    assert ahead.engine.runner.graphs is not None
    assert drive(ahead.engine, script) == drive(plain.engine, script)
    assert ahead.engine.steps_queued_ahead > 20
    assert plain.engine.steps_queued_ahead == 0


def test_steps_queued_ahead_equal_plain_steps_in_bf16(tiny_m2_checkpoint: Path) -> None:
    """The production dtype, where every step's batch is the same either way (no request
    stops while another runs): the same tokens, bit for bit."""
    from m2agent.engine import SamplingParams

    def params(seed: int | None) -> SamplingParams:
        if seed is None:
            return SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
        return SamplingParams(temperature=1.0, top_p=0.95, top_k=40, seed=seed, max_tokens=24,
                              ignore_eos=True)  # fmt: skip

    script = {0: [(f"r{i}", p, params(None if i == 0 else i)) for i, p in enumerate(PROMPTS)]}
    ahead = LLM(tiny_m2_checkpoint, device="cuda")
    plain = LLM(tiny_m2_checkpoint, device="cuda", overlap_steps=False)
    assert drive(ahead.engine, script) == drive(plain.engine, script)
    assert ahead.engine.steps_queued_ahead == 22
