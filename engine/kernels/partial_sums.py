"""A kernel's output left as fp32 partial sums, for the next kernel to add up as it reads them.

Split-K kernels (FP8 linear, MoE down projection) cut their reduction over programs; the MoE
also leaves one row per (token, expert pick). Instead of a separate launch that sums the
pieces, the consumer (fused residual add + RMSNorm, QK-norm + RoPE + KV write) reads every
piece and sums them in a fixed order, so graph replay and eager give the same bits. Anything
else calls `materialize()`. No triton here: the layers import it on CPU too.
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


def materialize(value: torch.Tensor | PartialSums) -> torch.Tensor:
    return value.materialize() if isinstance(value, PartialSums) else value
