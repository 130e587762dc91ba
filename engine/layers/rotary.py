"""Partial NeoX rotary embedding: the first `rotary_dim` dims of each head rotate.

The cos/sin table is computed once per forward pass (it depends only on the positions) and
shared by every layer."""

from __future__ import annotations

import torch

from m2agent.engine.kernels.reference import apply_rope, rope_cos_sin


class PartialRotary:
    def __init__(self, rotary_dim: int, theta: float) -> None:
        self.rotary_dim, self.theta = rotary_dim, theta

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, rotary_dim] for tokens at `positions` [T]."""
        return rope_cos_sin(positions, self.rotary_dim, self.theta, dtype)

    @staticmethod
    def rotate(
        q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, H, D] and k [T, Hkv, D]."""
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
