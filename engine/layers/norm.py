"""RMSNorm with a plain weight: `w * x * rsqrt(mean(x^2) + eps)`; also over a vector split
across tensor-parallel ranks (M2's QK-norm spans all heads)."""

from __future__ import annotations

import torch
from torch import nn

from m2agent.engine.kernels import dispatch
from m2agent.engine.kernels.dispatch import NORM_ARRIVALS
from m2agent.engine.kernels.partial_sums import PartialSums, PendingNorm
from m2agent.engine.kernels.reference import rms_norm
from m2agent.engine.layers.loading import Slice, new_parameter, sliced_loader
from m2agent.engine.layers.parallel import TensorParallel


class RMSNorm(nn.Module):
    """`arrivals`: the counters its sliced CUDA kernel uses (zero between calls; not part of
    the checkpoint), made with the model so a captured decode graph allocates none."""

    arrivals: torch.Tensor

    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = new_parameter((size,), dtype)
        self.register_buffer(
            "arrivals", torch.zeros(NORM_ARRIVALS, dtype=torch.int32), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)

    def add_and_norm(
        self, x: torch.Tensor, delta: torch.Tensor | PartialSums | None, defer: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | PendingNorm]:
        """(x + delta, its norm) in one kernel on CUDA; x may be updated in place. `defer`:
        the consumer finishes a `PendingNorm` (a one-row decode step on CUDA)."""
        return dispatch.add_rms_norm(x, delta, self.weight, self.eps, self.arrivals, defer)


class SplitRMSNorm(nn.Module):
    """RMSNorm of a vector `size` wide of which this rank holds an even slice (and the
    matching slice of the weight). The mean of squares needs every slice: callers sum the
    ranks' `sum_of_squares` (one all-reduce can serve several norms), then `normalize` with it."""

    def __init__(self, size: int, eps: float, dtype: torch.dtype, tp: TensorParallel) -> None:
        super().__init__()
        self.eps, self.full_size, self.tp = eps, size, tp
        part = Slice.of_rank(0, size, tp, "the QK-norm width")
        self.weight = new_parameter((part.length if part else size,), dtype, sliced_loader(part))

    @staticmethod
    def sum_of_squares(x: torch.Tensor) -> torch.Tensor:
        return x.float().pow(2).sum(-1, keepdim=True)

    def normalize(self, x: torch.Tensor, total_sum_of_squares: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(total_sum_of_squares / self.full_size + self.eps)
        return self.weight * normed.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return rms_norm(x, self.weight, self.eps)
        return self.normalize(x, self.tp.all_reduce(self.sum_of_squares(x)))
