"""Continuous batching: which sequences run in the next step, and how many tokens each.

Each step has a token budget. Running sequences go first (decodes, then unfinished prefills),
then waiting ones are admitted while blocks, sequence slots and budget last; a long prompt is
prefilled in chunks so it never freezes the other streams. When blocks run out, the newest
running sequence is preempted (its KV freed, recomputed later). Pure Python: no torch.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from m2agent.engine.block_manager import BlockManager
from m2agent.engine.errors import EngineError
from m2agent.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")


@dataclass(frozen=True, slots=True)
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # tokens of this sequence computed in this step

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence, so a token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens


@dataclass(frozen=True, slots=True)
class ScheduledBatch:
    entries: list[ScheduledSeq]
    preempted: list[Sequence]

    @property
    def num_tokens(self) -> int:
        return sum(e.num_tokens for e in self.entries)

    @property
    def is_decode_only(self) -> bool:
        return all(e.num_tokens == 1 and e.samples for e in self.entries)


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        self.config, self.blocks = config, blocks
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._arrivals = itertools.count()

    def add(self, seq: Sequence) -> None:
        needed = self.blocks.blocks_needed(seq.num_tokens + 1)
        if needed > self.blocks.num_blocks:
            raise EngineError(
                f"the request needs {needed} KV blocks but the cache has {self.blocks.num_blocks}"
            )
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)

    def abort(self, request_id: str) -> Sequence | None:
        for queue in (self.running, self.waiting):
            for seq in queue:
                if seq.request_id == request_id:
                    queue.remove(seq)
                    self.finish(seq)
                    return seq
        return None

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out of the running set and release its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        seq.status = SequenceStatus.FINISHED
        self.blocks.commit(seq)
        self.blocks.free(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        budget = self.config.max_num_batched_tokens
        entries: list[ScheduledSeq] = []
        preempted: list[Sequence] = []

        # 1. Running sequences: decodes first, then prefills left unfinished by the budget.
        for seq in sorted(self.running, key=lambda s: (s.num_pending_tokens > 1, s.arrival)):
            if seq not in self.running or budget == 0:
                continue
            num = min(seq.num_pending_tokens, budget)
            while not self.blocks.can_allocate(seq, num):
                victim = self._newest_running(excluding=seq)
                if victim is None:
                    raise EngineError(
                        "the KV cache cannot hold even one sequence of this length: "
                        "give the engine more memory or a shorter context"
                    )
                self._preempt(victim)
                preempted.append(victim)
                entries = [e for e in entries if e.seq is not victim]
                budget = self.config.max_num_batched_tokens - sum(e.num_tokens for e in entries)
                num = min(seq.num_pending_tokens, budget)
            if num == 0:
                continue
            self.blocks.allocate(seq, num)
            entries.append(ScheduledSeq(seq, num))
            budget -= num

        # 2. Waiting sequences, in arrival order, while everything they need is there.
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.can_allocate(seq, 1):
                break
            self.waiting.popleft()
            self.blocks.admit(seq)
            room = (len(seq.block_table) + self.blocks.num_free_blocks) * self.blocks.block_size
            num = min(seq.num_pending_tokens, budget, room - seq.num_computed_tokens)
            self.blocks.allocate(seq, num)
            seq.status, seq.arrival = SequenceStatus.RUNNING, next(self._arrivals)
            self.running.append(seq)
            entries.append(ScheduledSeq(seq, num))
            budget -= num
        return ScheduledBatch(entries, preempted)

    def update(self, batch: ScheduledBatch) -> None:
        """After the model ran `batch`: those tokens' KV is in the cache."""
        for entry in batch.entries:
            self.update_one(entry)

    def update_one(self, entry: ScheduledSeq) -> None:
        """After the model ran `entry`: its tokens' KV is in the cache."""
        entry.seq.num_computed_tokens += entry.num_tokens
        self.blocks.commit(entry.seq)

    def _newest_running(self, excluding: Sequence) -> Sequence | None:
        candidates = [s for s in self.running if s is not excluding]
        return max(candidates, key=lambda s: s.arrival, default=None)

    def _preempt(self, seq: Sequence) -> None:
        """Free the KV of `seq` and put it back at the head of the queue (recompute later)."""
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.num_cached_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
