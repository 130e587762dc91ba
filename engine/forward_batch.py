"""`ForwardBatch`: everything one model step needs to know about its tokens.

T tokens from B sequences, laid out sequence after sequence. Tensors live on the model's
device; the same facts as Python lists serve the reference path without device syncs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class ForwardBatch:
    token_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64: position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] int64: block * block_size + offset where its KV goes
    block_tables: torch.Tensor  # [B, max_blocks] int32 (rows padded with 0)
    seq_lens: torch.Tensor  # [B] int32: tokens with KV after this step (context + new)
    query_start: torch.Tensor  # [B+1] int32: where each sequence's tokens start in the T
    logits_indices: torch.Tensor  # [S] int64: rows of the T tokens that need logits
    query_lens_list: list[int]  # per sequence: tokens computed in this step
    seq_lens_list: list[int]
    block_tables_list: list[list[int]]
    is_decode: bool  # every sequence computes exactly one token

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens_list)

    @property
    def max_query_len(self) -> int:
        return max(self.query_lens_list, default=0)
