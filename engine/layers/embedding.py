"""Token embedding and the (untied) LM head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2agent.engine.layers.loading import new_parameter


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = new_parameter((vocab_size, hidden_size), dtype)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.weight)


class LMHead(nn.Module):
    def __init__(self, hidden_size: int, vocab_size: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = new_parameter((vocab_size, hidden_size), dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits in fp32 for hidden [T, C]."""
        return F.linear(hidden, self.weight).float()
