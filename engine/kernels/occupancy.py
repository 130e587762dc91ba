"""How many programs a memory-bound kernel needs: the device's SM count, and the split of a
reduction dimension that gives every SM several programs to keep loads in flight."""

from __future__ import annotations

import functools

import torch

PROGRAMS_PER_SM = 4  # enough loads in flight per SM to cover HBM latency (measured on an H200)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    if device.type != "cuda":  # Triton's interpreter (TRITON_INTERPRET=1) runs on CPU tensors
        return 132
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def split_k(
    programs: int,
    k_blocks: int,
    device: torch.device,
    max_split: int = 16,
    per_sm: int = PROGRAMS_PER_SM,
) -> int:
    """Pieces to cut a loop of `k_blocks` steps into (a power of two, each piece >= 2 steps)
    so that `programs` x pieces reaches `per_sm` programs per SM."""
    target = per_sm * sm_count(device)
    split = 1
    while programs * split < target and k_blocks >= 4 * split and split < max_split:
        split *= 2
    return split


def split_k_waves(
    programs: int,
    k_blocks: int,
    device: torch.device,
    per_sm: int = PROGRAMS_PER_SM,
    max_split: int = 16,
) -> int:
    """Like `split_k`, for programs that all take the same time (a one-row GEMV): pieces
    that divide the loop evenly (each >= 2 steps), reaching `per_sm` programs per SM, and
    among those the one whose last wave of programs is fullest (ties: fewer pieces). M2's
    q/k/v at batch 1 (256 tiles): 3 pieces, 1.94 waves, instead of 2 (1.29 waves: the
    second 29% full); 0.4-0.7 us a layer faster on an H200 (docs/bench/i12/round7)."""
    slots = per_sm * sm_count(device)
    even = [s for s in range(1, max_split + 1) if k_blocks % s == 0 and k_blocks // s >= 2]
    if not even:
        return 1
    enough = [s for s in even if programs * s >= slots]
    if not enough:
        return max(even)

    def fill(s: int) -> float:
        total = programs * s
        return total / (-(-total // slots) * slots)

    return max(enough, key=lambda s: (fill(s), -s))
