"""Partial NeoX rotary embedding: the first `rotary_dim` dims of each head rotate."""

from __future__ import annotations

import torch

from m2agent.engine.kernels.reference import apply_rope, rope_cos_sin


class PartialRotary:
    def __init__(self, rotary_dim: int, theta: float) -> None:
        self.rotary_dim, self.theta = rotary_dim, theta

    def __call__(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate q [T, H, D] and k [T, Hkv, D] for tokens at `positions` [T]."""
        cos, sin = rope_cos_sin(positions, self.rotary_dim, self.theta, q.dtype)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
