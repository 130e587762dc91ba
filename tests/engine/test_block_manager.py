"""Paged KV blocks: prefix reuse by chained hashes, LRU eviction, and conservation."""

from __future__ import annotations

from m2agent.engine.block_manager import BlockManager
from m2agent.engine.sampling import SamplingParams
from m2agent.engine.sequence import Sequence


def seq(tokens: list[int], request_id: str = "r") -> Sequence:
    return Sequence(request_id, list(tokens), SamplingParams())


def run_to_end(blocks: BlockManager, s: Sequence) -> None:
    """Pretend the model computed every token of `s`."""
    blocks.allocate(s, s.num_pending_tokens)
    s.num_computed_tokens = s.num_tokens
    blocks.commit(s)


def test_prefix_reuse_after_the_first_request_finishes() -> None:
    blocks = BlockManager(num_blocks=16, block_size=4)
    first = seq(list(range(10)))
    blocks.admit(first)
    assert first.num_cached_tokens == 0
    run_to_end(blocks, first)
    blocks.free(first)
    blocks.check()
    assert blocks.num_free_blocks == 16 and blocks.num_cached_blocks == 2

    second = seq([*range(10), 99, 98])  # same first 10 tokens: 2 full blocks cached
    blocks.admit(second)
    assert second.num_cached_tokens == 8
    assert second.num_computed_tokens == 8
    blocks.check()


def test_fully_cached_prompt_still_computes_its_last_token() -> None:
    blocks = BlockManager(num_blocks=8, block_size=4)
    first = seq(list(range(8)))
    blocks.admit(first)
    run_to_end(blocks, first)
    blocks.free(first)
    again = seq(list(range(8)))
    blocks.admit(again)
    assert again.num_cached_tokens == 4  # the last block is recomputed: logits need a token
    assert again.num_pending_tokens == 4


def test_shared_blocks_are_reference_counted() -> None:
    blocks = BlockManager(num_blocks=8, block_size=2)
    base = seq([1, 2, 3, 4, 5])
    blocks.admit(base)
    run_to_end(blocks, base)
    a, b = seq([1, 2, 3, 4, 7], "a"), seq([1, 2, 3, 4, 8], "b")
    blocks.admit(a)
    blocks.admit(b)
    assert a.block_table[:2] == b.block_table[:2] == base.block_table[:2]
    blocks.free(base)
    blocks.free(a)
    blocks.check()
    assert a.block_table == [] and b.num_cached_tokens == 4
    blocks.free(b)
    blocks.check()
    assert blocks.num_free_blocks == 8


def test_lru_evicts_leaves_first_and_unregisters_them() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    old = seq([1, 2, 3, 4, 5])
    blocks.admit(old)
    run_to_end(blocks, old)  # blocks: root [1,2], leaf [3,4], tail [5] (not full: uncached)
    blocks.free(old)
    assert blocks.num_cached_blocks == 2
    root = blocks.cached_prefix([1, 2, 0])
    newcomer = seq([9, 9])
    blocks.admit(newcomer)
    blocks.allocate(newcomer, 2)  # a never-used block first
    blocks.allocate(newcomer, 4)  # then the released tail
    assert blocks.num_cached_blocks == 2
    blocks.allocate(newcomer, 6)  # then the leaf [3,4] is evicted, the root stays
    assert blocks.num_cached_blocks == 1
    assert blocks.cached_prefix([1, 2, 3, 4, 0]) == root
    blocks.check()


def test_can_allocate_counts_reused_free_blocks() -> None:
    blocks = BlockManager(num_blocks=3, block_size=2)
    first = seq([1, 2, 3, 4, 5])
    blocks.admit(first)
    run_to_end(blocks, first)
    blocks.free(first)
    follow = seq([1, 2, 3, 4, 5, 6])
    assert blocks.can_allocate(follow, 2)  # 2 cached free blocks reused + 1 fresh
    assert not blocks.can_allocate(follow, 5)


def test_hash_collision_guard_compares_tokens() -> None:
    blocks = BlockManager(num_blocks=4, block_size=2)
    first = seq([1, 2, 3])
    blocks.admit(first)
    run_to_end(blocks, first)
    assert blocks.cached_prefix([1, 3, 3]) == []
