"""The decode graphs' host staging, refreshed in place between steps, always equals the inputs
built from scratch: random batches whose sequences grow, finish, swap rows and come back."""

from __future__ import annotations

import random

import pytest
import torch

from m2agent.engine.runner.decode_staging import DecodeStaging

SCRATCH_BLOCK, SCRATCH_SLOT = 99, 99 * 16


def expected(tokens, positions, slots, tables, size, max_blocks):
    n = len(tokens)
    ids = torch.tensor(
        [
            tokens + [0] * (size - n),
            positions + [0] * (size - n),
            slots + [SCRATCH_SLOT] * (size - n),
            [p + 1 for p in positions] + [1] * (size - n),
        ]
    )
    rows = [t + [SCRATCH_BLOCK] * (max_blocks - len(t)) for t in tables]
    rows += [[SCRATCH_BLOCK] * max_blocks] * (size - n)
    return ids, torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize("seed", range(4))
def test_staging_equals_inputs_built_from_scratch(seed: int) -> None:
    rng = random.Random(seed)
    max_batch, max_blocks = 8, 40
    staging = DecodeStaging(max_batch, max_blocks, SCRATCH_BLOCK, SCRATCH_SLOT, pin=False)
    live: dict[int, list[int]] = {}  # sequence -> its block table
    next_id = 0
    for _ in range(400):
        for seq in list(live):  # some finish (their blocks reused by others), some grow
            if rng.random() < 0.08:
                del live[seq]
            elif rng.random() < 0.3 and len(live[seq]) < max_blocks:
                live[seq].append(rng.randrange(SCRATCH_BLOCK))
        while len(live) < rng.randint(1, max_batch):
            live[next_id] = [rng.randrange(SCRATCH_BLOCK) for _ in range(rng.randint(1, 30))]
            next_id += 1
        order = list(live)
        if rng.random() < 0.2:  # the scheduler may reorder rows
            rng.shuffle(order)
        tables = [list(live[s]) for s in order]
        n = len(tables)
        size = rng.randint(n, max_batch)
        tokens = [rng.randrange(1000) for _ in range(n)]
        positions = [len(t) * 16 - rng.randint(1, 16) for t in tables]
        slots = [rng.randrange(10_000) for _ in range(n)]
        width = staging.fill(tokens, positions, slots, tables, size)
        ids, rows = expected(tokens, positions, slots, tables, size, max_blocks)
        assert width == max(len(t) for t in tables)
        assert torch.equal(staging.ids[:, :size], ids)
        assert torch.equal(staging.tables[:size], rows)  # the scratch block past every table


def test_bad_batches_are_refused() -> None:
    staging = DecodeStaging(2, 4, SCRATCH_BLOCK, SCRATCH_SLOT, pin=False)
    with pytest.raises(ValueError, match="decode batch"):
        staging.fill([1, 2, 3], [0, 0, 0], [0, 0, 0], [[1], [2], [3]], 3)
    with pytest.raises(ValueError, match="decode batch"):
        staging.fill([1], [0, 1], [0], [[1]], 1)
    with pytest.raises(ValueError, match="block table"):
        staging.fill([1], [0], [0], [[1] * 5], 1)
