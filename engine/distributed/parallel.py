"""`TensorParallel`: this process's place in the tensor-parallel group, and the two collectives
the model needs (sum partial outputs; gather vocabulary slices). With size 1 both are no-ops,
so single-device code pays nothing."""

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
