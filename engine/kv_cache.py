"""A contiguous key/value cache for one sequence: [L, S_max, Hkv, D] per keys and values.

The serving engine replaces this with a paged pool shared by all requests; the model's attention
only sees per-layer views, so it does not change when that happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from m2agent.engine.model_config import ModelConfig


@dataclass(frozen=True, slots=True)
class SequenceKVCache:
    keys: torch.Tensor  # [L, S_max, Hkv, D]
    values: torch.Tensor

    @classmethod
    def allocate(
        cls, config: ModelConfig, max_tokens: int, dtype: torch.dtype, device: torch.device
    ) -> SequenceKVCache:
        shape = (config.num_hidden_layers, max_tokens, config.num_key_value_heads, config.head_dim)
        return cls(
            torch.empty(shape, dtype=dtype, device=device),
            torch.empty(shape, dtype=dtype, device=device),
        )

    @property
    def capacity(self) -> int:
        return self.keys.shape[1]
