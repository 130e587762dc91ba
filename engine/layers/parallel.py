"""`TensorParallel`: this process's place in the parallel group, as the layers see it: rank and
size, the expert layout, and the two collectives the model needs (sum partial outputs; gather
vocabulary slices). With size 1 both are no-ops, so single-device code pays nothing.

Layout: `size` ranks split attention (heads) and the vocabulary `size` ways. The experts are
spread over `expert_parallel_size` groups of ranks (whole experts, E / ep per group); inside a
group of `size / ep` ranks each expert's intermediate size is split as under plain tensor
parallelism. ep 1 is pure tensor parallelism; ep == size gives every rank whole experts.
Starting processes and joining the group is the runner's job (`runner/workers.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from m2agent.engine.errors import ConfigError


@dataclass(frozen=True, slots=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    group: Any = None  # the torch.distributed group of the model's tensors
    expert_parallel_size: int = 1  # groups the experts are spread over (divides size)

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.size:
            raise ConfigError(f"rank {self.rank} is outside 0..{self.size - 1}")
        if self.expert_parallel_size < 1 or self.size % self.expert_parallel_size:
            raise ConfigError(
                f"expert-parallel size {self.expert_parallel_size} must divide the number of "
                f"ranks ({self.size})"
            )

    def split(self, total: int, what: str) -> int:
        """This rank's share of `total` (heads, rows, ...), which must divide evenly."""
        if total % self.size:
            raise ConfigError(
                f"{what} ({total}) is not divisible by the tensor-parallel size {self.size}"
            )
        return total // self.size

    def padded_split(self, total: int) -> int:
        """Rows per rank when the last rank may hold fewer (the vocabulary)."""
        return math.ceil(total / self.size)

    @property
    def expert_rank(self) -> int:
        """Which expert group this rank belongs to (0..ep-1)."""
        return self.rank // self.expert_tp.size

    @property
    def expert_tp(self) -> TensorParallel:
        """This rank's place among the ranks that share each of its experts (the split of the
        intermediate size); no group: the experts' partial sums join the layer's all-reduce."""
        per_group = self.size // self.expert_parallel_size
        return TensorParallel(self.rank % per_group, per_group)

    def owned_experts(self, num_experts: int) -> range:
        """The global ids of the experts this rank holds: an even, contiguous share."""
        ep = self.expert_parallel_size
        if num_experts % ep:
            raise ConfigError(
                f"num_local_experts ({num_experts}) is not divisible by the expert-parallel "
                f"size {ep}"
            )
        share = num_experts // ep
        return range(self.expert_rank * share, (self.expert_rank + 1) * share)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the ranks, in place (each rank holds a partial sum)."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def gather_last_dim(self, x: torch.Tensor) -> torch.Tensor:
        """[..., n] on every rank -> [..., size * n], rank order."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)


SINGLE = TensorParallel()
