"""The host side of a captured decode step's inputs: the buffers the graphs' inputs are copied
from (pinned on CUDA), kept up to date between steps rather than rebuilt.

Token ids, positions, KV slots and sequence lengths are a few numbers per sequence. The block
tables are not: at a 64K-token context one sequence's table holds 4,096 block ids, and turning
that Python list into a tensor costs ~0.65 ms on a slow host (`torch.tensor`), more than the
whole GPU step of a small model. Between two steps a sequence's table grows by at most one
block, so each row is compared with what the buffer already holds and only its new tail is
written; a row that now holds another sequence is rewritten whole (through numpy: ~0.13 ms at
4,096 ids). Past each row's table the buffer always holds the scratch block, so any width of it
reads as the padded tables.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class DecodeStaging:
    """`ids` [4, max_batch] int64 (token ids, positions, KV slots, sequence lengths) and
    `tables` [max_batch, max_blocks] int32, refreshed by `fill` for each step."""

    def __init__(
        self, max_batch: int, max_blocks: int, scratch_block: int, scratch_slot: int, pin: bool
    ) -> None:
        self.ids = torch.zeros((4, max_batch), dtype=torch.long, pin_memory=pin)
        self.tables = torch.full(
            (max_batch, max_blocks), scratch_block, dtype=torch.int32, pin_memory=pin
        )
        self._ids = self.ids.numpy()  # views of the same memory
        self._tables = self.tables.numpy()
        self._held: list[list[int]] = [[] for _ in range(max_batch)]  # each row's table
        self.scratch_block, self.scratch_slot = scratch_block, scratch_slot
        self.max_batch, self.max_blocks = max_batch, max_blocks

    def fill(
        self,
        token_ids: Sequence[int],
        positions: Sequence[int],
        slots: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        size: int,
    ) -> int:
        """Stage a decode batch of `len(token_ids)` sequences padded to `size` rows (padding
        writes its KV to the scratch slot and reads the scratch block); returns the width of
        the tables to copy (the longest table)."""
        n = len(token_ids)
        if not 0 < n <= size <= self.max_batch or not (
            len(positions) == len(slots) == len(block_tables) == n
        ):
            raise ValueError(
                f"a decode batch of {n} sequences in {size} rows (at most {self.max_batch})"
            )
        ids = self._ids
        ids[0, :n], ids[0, n:size] = token_ids, 0
        ids[1, :n], ids[1, n:size] = positions, 0
        ids[2, :n], ids[2, n:size] = slots, self.scratch_slot
        ids[3, :n], ids[3, n:size] = positions, 1
        ids[3, :n] += 1
        for row, table in enumerate(block_tables):
            self._hold(row, table)
        for row in range(n, size):
            self._hold(row, [])
        return max(len(t) for t in block_tables)

    def _hold(self, row: int, table: Sequence[int]) -> None:
        if not isinstance(table, list):
            table = list(table)
        held, length = self._held[row], len(table)
        if length > self.max_blocks:
            raise ValueError(f"a block table of {length} blocks (at most {self.max_blocks})")
        kept = len(held)
        if length >= kept and (table[:kept] if length > kept else table) == held:
            if length > kept:  # the same sequence, a block (or a few) further on
                tail = table[kept:]
                self._tables[row, kept:length] = tail
                held.extend(tail)
            return
        self._tables[row, :length] = table  # another sequence (or fewer blocks): whole row
        if kept > length:
            self._tables[row, length:kept] = self.scratch_block
        self._held[row] = list(table)
