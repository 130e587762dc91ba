"""Host time to stage one captured decode step's inputs, on this machine (CPU only): the code
DecodeStaging replaced (a tensor built from padded Python lists every step) against
`DecodeStaging.fill` (rows refreshed in place), at 512, 16K and 64K tokens of context and 1, 16
and 64 sequences; tables grow by one block every 16 steps, as decoding does. Medians of 50
steps (after 10) with their range.

Usage: python bench/decode_staging_bench.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from m2agent.engine.runner.decode_staging import DecodeStaging

SCRATCH_BLOCK, SCRATCH_SLOT, BLOCK_SIZE = 7, 7 * 16, 16


def rebuilt(ids: torch.Tensor, tables: torch.Tensor, batch: list[list[int]], *, ctx: int) -> None:
    """What `DecodeGraphs.run` did before DecodeStaging (padding rows omitted: none here)."""
    n = len(batch)
    ids[0, :n] = torch.tensor([1] * n)
    ids[1, :n] = torch.tensor([ctx] * n)
    ids[2, :n] = torch.tensor([5] * n)
    ids[3, :n] = torch.tensor([ctx + 1] * n)
    width = max(len(t) for t in batch)
    rows = [t + [SCRATCH_BLOCK] * (width - len(t)) for t in batch]
    tables[:n, :width] = torch.tensor(rows, dtype=torch.int32)


def refreshed(staging: DecodeStaging, batch: list[list[int]], *, ctx: int) -> None:
    n = len(batch)
    staging.fill([1] * n, [ctx] * n, [5] * n, batch, n)


def timed(step: Callable[[list[list[int]]], object], live: list[list[int]]) -> list[float]:
    times = []
    for i in range(60):
        if i % BLOCK_SIZE == 0:
            for table in live:
                table.append(table[-1] + 1_000_000)
        batch = [t[:] for t in live]  # fresh slices each step, as StepPlan.of makes them
        started = time.perf_counter()
        step(batch)
        times.append((time.perf_counter() - started) * 1e6)
    return times[10:]


def main() -> None:
    for ctx in (512, 16_384, 65_536):
        for n in (1, 16, 64):
            blocks = ctx // BLOCK_SIZE + 1
            width = blocks + 8
            live = [list(range(b * width, b * width + blocks)) for b in range(n)]
            ids = torch.empty((4, n), dtype=torch.long)
            tables = torch.empty((n, width), dtype=torch.int32)
            staging = DecodeStaging(n, width, SCRATCH_BLOCK, SCRATCH_SLOT, pin=False)
            before = timed(partial(rebuilt, ids, tables, ctx=ctx), [t[:] for t in live])
            after = timed(partial(refreshed, staging, ctx=ctx), [t[:] for t in live])
            print(
                f"context {ctx:6d}, {n:2d} sequences: rebuilt {statistics.median(before):8.1f} us "
                f"({min(before):.0f}-{max(before):.0f}), refreshed "
                f"{statistics.median(after):6.1f} us ({min(after):.0f}-{max(after):.0f})"
            )


if __name__ == "__main__":
    main()
