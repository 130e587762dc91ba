"""RMSNorm with a plain weight: `w * x * rsqrt(mean(x^2) + eps)`."""

from __future__ import annotations

import torch
from torch import nn

from m2agent.engine.kernels.reference import rms_norm
from m2agent.engine.layers.loading import new_parameter


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.eps = eps
        self.weight = new_parameter((size,), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
