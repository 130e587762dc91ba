"""A kernel's output left as fp32 partial sums, for the next kernel to add up as it reads them.

Split-K kernels (FP8 linear, MoE down projection) cut their reduction over programs; the MoE
also leaves one row per (token, expert pick). Instead of a separate launch that sums the
pieces, the consumer (fused residual add + RMSNorm, QK-norm + RoPE + KV write) reads every
piece and sums them in a fixed order, so graph replay and eager give the same bits. Anything
else calls `materialize()`. Likewise a batch-1 RMSNorm whose last step (adding the slices'
sums of squares, scaling the row) its consumers do as they read (`PendingNorm`). No triton
here: the layers import it on CPU too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class PartialSums:
    """The [T, C] value `parts.sum(dim=(0, 2))` rounded to `dtype`. `parts` [S, T, G, C] fp32:
    S pieces of the reduction, G rows per token (MoE: the token's expert picks, weighted)."""

    parts: torch.Tensor
    dtype: torch.dtype

    def __post_init__(self) -> None:
        if self.parts.dim() != 4 or self.parts.dtype != torch.float32:
            raise ValueError(f"partial sums must be fp32 [S, T, G, C], got {self.parts.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return self.parts.shape[1], self.parts.shape[3]

    def materialize(self) -> torch.Tensor:
        return self.parts.sum(dim=(0, 2)).to(self.dtype)

    def columns(self, start: int, width: int) -> PartialSums:
        """Columns start..start+width of the value (a view: nothing is copied)."""
        return PartialSums(self.parts[..., start : start + width], self.dtype)


def materialize(value: torch.Tensor | PartialSums | PendingNorm) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else value.materialize()


@dataclass(frozen=True, slots=True)
class PendingNorm:
    """The RMSNorm of a one-row residual stream, left for its consumer to finish as it reads
    (the batch-1 decode step: the q/k/v GEMV, the router): `x` [1, C] after the residual add,
    `squares` [1, S] fp32 (the sums of squares of its S column slices, to be added in order),
    the norm's `weight` [C] and `eps`. The value is `reference.rms_norm(x)` with the mean of
    squares summed from the slices; `materialize()` computes it for any other reader."""

    x: torch.Tensor
    squares: torch.Tensor
    weight: torch.Tensor
    eps: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.x.shape[0], self.x.shape[1]

    def materialize(self) -> torch.Tensor:
        sum_sq = self.squares.sum(-1, keepdim=True)
        normed = self.x.float() * torch.rsqrt(sum_sq / self.x.shape[-1] + self.eps)
        return self.weight * normed.to(self.x.dtype)
