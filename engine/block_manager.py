"""Paged KV blocks: allocation, reference counts, and prefix reuse by chained block hashes.

A full block's hash covers its tokens and, through the previous block's hash, every token
before it, so equal hashes mean equal prefixes (token ids are compared too, to rule out
collisions). Blocks whose last user finished stay cached in an LRU list and are reused by any
request with the same prefix until evicted, leaves of a chain first. Pure Python: no torch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq
from dataclasses import dataclass

from m2agent.engine.sequence import Sequence


@dataclass(slots=True)
class _Block:
    ref_count: int = 0
    hash: int | None = None  # set once the block is full and its KV computed
    token_ids: tuple[int, ...] = ()


class NoFreeBlocksError(RuntimeError):
    """Raised by allocate when the caller did not check `can_allocate` first (a bug)."""


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be positive")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self._blocks = [_Block() for _ in range(num_blocks)]
        # Blocks nobody uses, oldest first; cached ones (with a hash) among them are evictable.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._by_hash: dict[int, int] = {}

    # -- queries ------------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._by_hash)

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def cached_prefix(self, token_ids: Seq[int]) -> list[int]:
        """Block ids holding the longest cached prefix of `token_ids` (whole blocks only,
        always leaving at least one token to compute, so the model yields logits)."""
        if not self.enable_prefix_caching:
            return []
        hits: list[int] = []
        parent: int | None = None
        usable = (len(token_ids) - 1) // self.block_size
        for i in range(usable):
            tokens = tuple(token_ids[i * self.block_size : (i + 1) * self.block_size])
            block_hash = hash((parent, tokens))
            block_id = self._by_hash.get(block_hash)
            if block_id is None or self._blocks[block_id].token_ids != tokens:
                break
            hits.append(block_id)
            parent = block_hash
        return hits

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        """Whether `seq` can hold `num_new_tokens` more computed tokens (counting, for a
        sequence without blocks, the cached prefix it would reuse)."""
        return self.blocks_to_take(seq, num_new_tokens) <= self.num_free_blocks

    # -- changes ------------------------------------------------------------------------------

    def admit(self, seq: Sequence) -> None:
        """Give a waiting sequence its cached prefix: shared blocks, computed tokens skipped."""
        assert not seq.block_table, "admit() on a sequence that already has blocks"
        for block_id in self.cached_prefix(seq.token_ids):
            self._take(block_id)
            seq.block_table.append(block_id)
            seq.last_block_hash = self._blocks[block_id].hash
        seq.num_hashed_blocks = len(seq.block_table)
        seq.num_computed_tokens = len(seq.block_table) * self.block_size
        seq.num_cached_tokens = seq.num_computed_tokens

    def allocate(self, seq: Sequence, num_new_tokens: int) -> None:
        """Make room for the KV of `num_new_tokens` more tokens of `seq`."""
        needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
        while len(seq.block_table) < needed:
            if not self._free:
                raise NoFreeBlocksError("no free KV block (call can_allocate first)")
            block_id = next(iter(self._free))
            self._evict(block_id)
            self._take(block_id)
            seq.block_table.append(block_id)

    def commit(self, seq: Sequence) -> None:
        """Register the full, computed blocks of `seq` for reuse by later requests."""
        if not self.enable_prefix_caching:
            return
        full = min(seq.num_computed_tokens // self.block_size, len(seq.block_table))
        for i in range(seq.num_hashed_blocks, full):
            block = self._blocks[seq.block_table[i]]
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            block_hash = hash((seq.last_block_hash, tokens))
            if block.hash is None and block_hash not in self._by_hash:
                block.hash, block.token_ids = block_hash, tokens
                self._by_hash[block_hash] = seq.block_table[i]
            # else an equal block is already cached: this one stays private
            seq.last_block_hash = block_hash
        seq.num_hashed_blocks = max(seq.num_hashed_blocks, full)

    def free(self, seq: Sequence) -> None:
        """Release the sequence's blocks; cached ones stay reusable until evicted. The tail is
        released first so that, in LRU order, a chain's leaves are evicted before its root."""
        for block_id in reversed(seq.block_table):
            block = self._blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block_id] = None
        seq.block_table.clear()
        seq.num_computed_tokens = seq.num_hashed_blocks = 0
        seq.last_block_hash = None

    def reset_prefix_cache(self) -> None:
        for block_id in list(self._free):
            self._evict(block_id)

    def check(self) -> None:
        """Invariants: every block is free xor referenced; ref counts are non-negative; the
        hash map points at blocks that carry that hash."""
        for block_id, block in enumerate(self._blocks):
            assert block.ref_count >= 0, f"block {block_id} has ref count {block.ref_count}"
            assert (block.ref_count == 0) == (block_id in self._free), f"block {block_id} leak"
        for block_hash, block_id in self._by_hash.items():
            assert self._blocks[block_id].hash == block_hash, f"stale hash for block {block_id}"

    # -- internals ----------------------------------------------------------------------------

    def blocks_to_take(self, seq: Sequence, num_new_tokens: int) -> int:
        """Free blocks that `allocate` (after `admit`, for a sequence without blocks) would
        take for `num_new_tokens` more computed tokens of `seq`."""
        if seq.block_table:
            needed = self.blocks_needed(seq.num_computed_tokens + num_new_tokens)
            return max(0, needed - len(seq.block_table))
        prefix = self.cached_prefix(seq.token_ids)
        reused_free = sum(1 for b in prefix if self._blocks[b].ref_count == 0)
        computed = len(prefix) * self.block_size
        fresh = self.blocks_needed(computed + num_new_tokens) - len(prefix)
        return reused_free + max(0, fresh)

    def _take(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.ref_count == 0:
            del self._free[block_id]
        block.ref_count += 1

    def _evict(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.hash is not None:
            del self._by_hash[block.hash]
            block.hash, block.token_ids = None, ()
