"""`LoadProgress`: the bytes one rank reads from a checkpoint, shown as shards done, GB read
and GB/s: a live line on a terminal, else a line every few seconds and one at the end.
Counts and formats only; the reads happen in `checkpoint.py`."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True, slots=True)
class LoadSummary:
    num_shards: int
    bytes_read: int
    checkpoint_bytes: int  # all shards' sizes: what reading whole tensors would have cost
    seconds: float

    @property
    def gb_per_s(self) -> float:
        return self.bytes_read / 1e9 / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        return (
            f"read {self.bytes_read / 1e9:.2f} GB of the checkpoint's "
            f"{self.checkpoint_bytes / 1e9:.2f} GB from {self.num_shards} shards in "
            f"{self.seconds:.1f} s ({self.gb_per_s:.2f} GB/s)"
        )


class LoadProgress:
    """Call `add_bytes` for every read and `shard_done` after each file; `finish` ends the
    display and returns the totals. `stream` None counts without showing anything."""

    def __init__(
        self,
        num_shards: int,
        checkpoint_bytes: int,
        stream: TextIO | None,
        clock: Callable[[], float] = time.perf_counter,
        every_s: float | None = None,
    ) -> None:
        self.num_shards, self.checkpoint_bytes = num_shards, checkpoint_bytes
        self.stream, self.clock = stream, clock
        self.is_live = bool(stream is not None and stream.isatty())
        # A terminal line is redrawn often; a log gets a line every few seconds at most.
        self.every_s = every_s if every_s is not None else (0.25 if self.is_live else 5.0)
        self.started = self.last_shown = clock()
        self.shards_done = 0
        self.bytes_read = 0

    def add_bytes(self, num_bytes: int) -> None:
        self.bytes_read += num_bytes
        self._show_if_due()

    def shard_done(self) -> None:
        self.shards_done += 1
        self._show_if_due()

    def line(self) -> str:
        elapsed = self.clock() - self.started
        rate = self.bytes_read / 1e9 / elapsed if elapsed > 0 else 0.0
        return (
            f"loading weights: shard {self.shards_done}/{self.num_shards}, "
            f"{self.bytes_read / 1e9:.2f} GB read (checkpoint {self.checkpoint_bytes / 1e9:.2f}"
            f" GB), {rate:.2f} GB/s"
        )

    def finish(self) -> LoadSummary:
        summary = LoadSummary(
            self.shards_done, self.bytes_read, self.checkpoint_bytes, self.clock() - self.started
        )
        if self.stream is not None:
            end = "\r\x1b[K" if self.is_live else ""
            self.stream.write(f"{end}loading weights: {summary.describe()}\n")
            self.stream.flush()
        return summary

    def _show_if_due(self) -> None:
        now = self.clock()
        if self.stream is None or now - self.last_shown < self.every_s:
            return
        self.last_shown = now
        if self.is_live:
            self.stream.write(f"\r\x1b[K{self.line()}")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
