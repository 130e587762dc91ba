"""Scheduled sequences -> `StepPlan` (small, picklable: what tensor-parallel workers receive)
-> `ForwardBatch`. Pure bookkeeping; the only device work is the copy of the finished index
lists to the model's device."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.scheduler import ScheduledSeq


@dataclass(frozen=True, slots=True)
class SeqStep:
    """One sequence's part of a step: `token_ids` at positions start.. computed now."""

    token_ids: list[int]
    start: int
    samples: bool  # its last token's logits are wanted
    block_table: list[int]  # the blocks covering positions 0 .. start + len(token_ids) - 1

    @property
    def end(self) -> int:
        return self.start + len(self.token_ids)


@dataclass(frozen=True, slots=True)
class StepPlan:
    seqs: list[SeqStep]
    all_logits: bool = False  # logits for every token, not only the sampling ones

    @classmethod
    def of(cls, entries: list[ScheduledSeq], block_size: int, all_logits: bool) -> StepPlan:
        steps = []
        for entry in entries:
            seq, start = entry.seq, entry.seq.num_computed_tokens
            end = start + entry.num_tokens
            steps.append(
                SeqStep(
                    seq.token_ids[start:end],
                    start,
                    entry.samples,
                    seq.block_table[: -(-end // block_size)],
                )
            )
        return cls(steps, all_logits)

    @property
    def is_decode(self) -> bool:
        """Every sequence computes one token and samples it."""
        return all(len(s.token_ids) == 1 and s.samples for s in self.seqs)


def build_forward_batch(plan: StepPlan, block_size: int, device: torch.device) -> ForwardBatch:
    """Lay out the tokens of `plan` for one step. Logits are taken for the last token of
    each sequence that samples (or for every token with `plan.all_logits`)."""
    token_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    seq_lens: list[int] = []
    tables: list[list[int]] = []
    logits_indices: list[int] = []
    for step in plan.seqs:
        num_tokens = len(step.token_ids)
        token_ids += step.token_ids
        positions += range(step.start, step.end)
        slots += [
            step.block_table[p // block_size] * block_size + p % block_size
            for p in range(step.start, step.end)
        ]
        if plan.all_logits:
            logits_indices += range(len(token_ids) - num_tokens, len(token_ids))
        elif step.samples:
            logits_indices.append(len(token_ids) - 1)
        query_lens.append(num_tokens)
        seq_lens.append(step.end)
        tables.append(step.block_table)
    width = max((len(t) for t in tables), default=1)
    padded = [t + [0] * (width - len(t)) for t in tables]

    def tensor(values: list[int] | list[list[int]], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

    return ForwardBatch(
        token_ids=tensor(token_ids, torch.long),
        positions=tensor(positions, torch.long),
        slot_mapping=tensor(slots, torch.long),
        block_tables=tensor(padded, torch.int32),
        seq_lens=tensor(seq_lens, torch.int32),
        query_start=tensor([0, *itertools.accumulate(query_lens)], torch.int32),
        logits_indices=tensor(logits_indices, torch.long),
        query_lens_list=query_lens,
        seq_lens_list=seq_lens,
        block_tables_list=tables,
        is_decode=all(n == 1 for n in query_lens),
    )
