"""One request's tokens and its place in the paged KV cache. Plain Python: no torch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from m2agent.engine.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


@dataclass(eq=False)
class Sequence:
    """Tokens 0 .. num_computed_tokens-1 have their keys and values in the cache, in the blocks
    of `block_table` (block i holds tokens i*block_size .. (i+1)*block_size-1)."""

    request_id: str
    token_ids: list[int]
    params: SamplingParams
    num_prompt_tokens: int = 0
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens whose KV came from the prefix cache
    arrival: int = 0  # admission order, for preemption (the newest is preempted first)
    num_hashed_blocks: int = 0  # leading blocks already registered in the prefix cache
    last_block_hash: int | None = None  # chain hash of the last of those

    def __post_init__(self) -> None:
        if not self.num_prompt_tokens:
            self.num_prompt_tokens = len(self.token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_pending_tokens(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
