"""Scheduled sequences -> `ForwardBatch`. Pure bookkeeping; the only device work is the copy
of the finished index lists to the model's device."""

from __future__ import annotations

import itertools

import torch

from m2agent.engine.forward_batch import ForwardBatch
from m2agent.engine.scheduler import ScheduledSeq


def build_forward_batch(
    entries: list[ScheduledSeq],
    block_size: int,
    device: torch.device,
    *,
    all_logits: bool = False,
) -> ForwardBatch:
    """Lay out the tokens of `entries` for one step. Logits are taken for the last token of
    each sequence that samples (or for every token with `all_logits`)."""
    token_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    query_lens: list[int] = []
    seq_lens: list[int] = []
    tables: list[list[int]] = []
    logits_indices: list[int] = []
    for entry in entries:
        seq, start = entry.seq, entry.seq.num_computed_tokens
        end = start + entry.num_tokens
        token_ids += seq.token_ids[start:end]
        positions += range(start, end)
        slots += [
            seq.block_table[p // block_size] * block_size + p % block_size
            for p in range(start, end)
        ]
        if all_logits:
            logits_indices += range(len(token_ids) - entry.num_tokens, len(token_ids))
        elif entry.samples:
            logits_indices.append(len(token_ids) - 1)
        query_lens.append(entry.num_tokens)
        seq_lens.append(end)
        tables.append(seq.block_table[: -(-end // block_size)])
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
