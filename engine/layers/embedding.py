"""Token embedding and the (untied) LM head, whole or split by vocabulary over tensor-parallel
ranks (each rank holds ceil(V / N) rows; the last rank's tail is zero padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2agent.engine.layers.loading import Slice, new_parameter, sliced_loader
from m2agent.engine.layers.parallel import SINGLE, TensorParallel


class Embedding(nn.Module):
    def __init__(
        self, vocab_size: int, hidden_size: int, dtype: torch.dtype, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        self.tp = tp
        part = Slice.padded(0, vocab_size, tp)
        self.start: int = part.start if part else 0
        rows = part.length if part else vocab_size
        self.weight = new_parameter((rows, hidden_size), dtype, sliced_loader(part))

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return F.embedding(token_ids, self.weight)
        local = token_ids - self.start
        mine = (local >= 0) & (local < self.weight.shape[0])
        rows = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight)
        return self.tp.all_reduce(rows * mine.unsqueeze(-1).to(rows.dtype))


class LMHead(nn.Module):
    def __init__(
        self, hidden_size: int, vocab_size: int, dtype: torch.dtype, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        self.tp, self.vocab_size = tp, vocab_size
        part = Slice.padded(0, vocab_size, tp)
        rows = part.length if part else vocab_size
        self.weight = new_parameter((rows, hidden_size), dtype, sliced_loader(part))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in fp32 for hidden [T, C] (every rank gets all of them)."""
        logits = F.linear(hidden, self.weight).float()
        if self.tp.size == 1:
            return logits
        return self.tp.gather_last_dim(logits)[..., : self.vocab_size]
