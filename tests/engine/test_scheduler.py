"""The scheduler under seeded random workloads, with the block invariants after every step."""

from __future__ import annotations

import random

import pytest

from m2agent.engine.block_manager import BlockManager
from m2agent.engine.errors import EngineError
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.scheduler import Scheduler, SchedulerConfig
from m2agent.engine.sequence import Sequence, SequenceStatus


def make(config: SchedulerConfig, num_blocks: int, block_size: int = 4) -> Scheduler:
    return Scheduler(config, BlockManager(num_blocks, block_size))


def check_conservation(scheduler: Scheduler) -> None:
    blocks = scheduler.blocks
    blocks.check()
    held = {b for s in scheduler.running for b in s.block_table}
    assert blocks.num_free_blocks + len(held) == blocks.num_blocks
    for s in scheduler.running:
        assert s.num_computed_tokens <= len(s.block_table) * blocks.block_size
    for s in scheduler.waiting:
        assert s.block_table == []


def simulate_step(scheduler: Scheduler, rng: random.Random, max_len: int) -> list[Sequence]:
    batch = scheduler.schedule()
    assert batch.num_tokens <= scheduler.config.max_num_batched_tokens
    assert len(scheduler.running) <= scheduler.config.max_num_seqs
    scheduler.update(batch)
    finished = []
    for entry in batch.entries:
        seq = entry.seq
        if seq.num_pending_tokens == 0:  # reached the end: the model sampled a token
            seq.token_ids.append(rng.randrange(50))
            if rng.random() < 0.15 or seq.num_tokens >= max_len:
                scheduler.finish(seq)
                finished.append(seq)
    check_conservation(scheduler)
    return finished


@pytest.mark.parametrize("seed", range(12))
def test_random_workload_keeps_invariants_and_finishes(seed: int) -> None:
    rng = random.Random(seed)
    config = SchedulerConfig(
        max_num_seqs=rng.choice([1, 3, 8]), max_num_batched_tokens=rng.choice([7, 16, 64])
    )
    scheduler = make(config, num_blocks=rng.choice([12, 30, 80]))
    prefixes = [[rng.randrange(50) for _ in range(rng.randrange(1, 20))] for _ in range(3)]
    submitted, finished, aborted = 0, 0, 0
    for _ in range(400):
        if submitted < 40 and rng.random() < 0.3:
            prompt = rng.choice(prefixes) + [rng.randrange(50) for _ in range(rng.randrange(1, 12))]
            scheduler.add(Sequence(f"r{submitted}", prompt, SamplingParams()))
            submitted += 1
        if rng.random() < 0.03 and scheduler.running:
            victim = rng.choice(scheduler.running)
            assert scheduler.abort(victim.request_id) is victim
            assert victim.status is SequenceStatus.FINISHED
            aborted += 1
        finished += len(simulate_step(scheduler, rng, max_len=44))
        if submitted == 40 and not scheduler.has_work:
            break
    assert not scheduler.has_work, "the workload did not drain in 400 steps"
    assert finished + aborted == submitted
    assert scheduler.blocks.num_free_blocks == scheduler.blocks.num_blocks


def test_decodes_go_first_and_long_prompts_are_chunked() -> None:
    scheduler = make(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=8), num_blocks=64)
    short = Sequence("short", [1, 2, 3], SamplingParams())
    scheduler.add(short)
    batch = scheduler.schedule()
    scheduler.update(batch)
    short.token_ids.append(7)  # sampled: now it decodes
    long = Sequence("long", list(range(30)), SamplingParams())
    scheduler.add(long)
    batch = scheduler.schedule()
    assert [(e.seq.request_id, e.num_tokens) for e in batch.entries] == [("short", 1), ("long", 7)]
    assert batch.entries[0].samples and not batch.entries[1].samples
    scheduler.update(batch)
    short.token_ids.append(8)
    batch = scheduler.schedule()  # the decode still runs every step while long prefills
    assert [(e.seq.request_id, e.num_tokens) for e in batch.entries] == [("short", 1), ("long", 7)]


def test_preemption_frees_the_newest_and_requeues_it() -> None:
    scheduler = make(
        SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64), num_blocks=4, block_size=2
    )
    a = Sequence("a", [1, 2, 3], SamplingParams())
    b = Sequence("b", [4, 5, 6], SamplingParams())
    scheduler.add(a)
    scheduler.add(b)
    batch = scheduler.schedule()
    assert {e.seq.request_id for e in batch.entries} == {"a", "b"}
    scheduler.update(batch)
    for s in (a, b):
        s.token_ids.append(9)
    # Each now needs a third block at its next token; only 0 are free.
    a.token_ids.append(9)
    a.num_computed_tokens = 4
    batch = scheduler.schedule()
    assert batch.preempted == [b]
    assert b.status is SequenceStatus.WAITING and b.block_table == []
    assert scheduler.waiting[0] is b
    check_conservation(scheduler)


def test_request_larger_than_the_cache_is_refused() -> None:
    scheduler = make(SchedulerConfig(), num_blocks=2, block_size=4)
    with pytest.raises(EngineError, match="needs 3 KV blocks but the cache has 2"):
        scheduler.add(Sequence("big", list(range(9)), SamplingParams()))
