"""`EngineConfig`: how to run the engine (not the model's architecture: see model_config.py).
Frozen and validated; knows nothing of the agent's settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: Path
    device: str = "cpu"
    dtype: str = "auto"  # "auto": bfloat16 on CUDA, float32 on CPU
    load_format: Literal["auto", "dummy"] = "auto"
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    block_size: int = 16
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.90  # share of the GPU the engine may fill (KV included)
    cpu_kv_cache_bytes: int = 512 << 20  # KV pool size on CPU
    num_kv_blocks: int | None = None  # exact pool size, overriding the memory-based sizing
    cuda_graphs: bool = True  # replay decode steps from captured graphs on CUDA
    # Queue each decode step before the host has read the tokens of the one before (the GPU
    # then never waits for the host's bookkeeping; a request that stops computes one step
    # more, which is dropped). None: on for a single-rank CUDA engine.
    overlap_steps: bool | None = None
    # At start-up, build the Triton kernel variants every eager step size needs (one step per
    # distinct case, a few seconds) so no request waits for a build. None: on for CUDA.
    warm_up: bool | None = None
    seed: int = 0  # for dummy weights
    tensor_parallel_size: int = 1  # processes (GPUs), each holding a slice of every layer
    # Groups of ranks the experts are spread over (whole experts, E / ep per group); None picks
    # the layout for the model (`runner.workers.default_expert_parallel`). With
    # tensor_parallel_size 1, ep > 1 alone sets the number of ranks.
    expert_parallel_size: int | None = None

    @property
    def num_ranks(self) -> int:
        """Processes (GPUs) the model runs on."""
        if self.tensor_parallel_size == 1:
            return self.expert_parallel_size or 1
        return self.tensor_parallel_size

    def __post_init__(self) -> None:
        problems = []
        if self.block_size < 1:
            problems.append("block_size must be positive")
        if self.max_num_seqs < 1:
            problems.append("max_num_seqs must be positive")
        if self.max_num_batched_tokens < 1:
            problems.append("max_num_batched_tokens must be positive")
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append("gpu_memory_utilization must be in (0, 1]")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            problems.append("num_kv_blocks must be positive")
        if self.max_model_len is not None and self.max_model_len < 2:
            problems.append("max_model_len must be at least 2")
        if self.tensor_parallel_size < 1:
            problems.append("tensor_parallel_size must be positive")
        ep = self.expert_parallel_size
        if ep is not None and ep < 1:
            problems.append("expert_parallel_size must be positive")
        elif ep is not None and self.tensor_parallel_size > 1 and self.tensor_parallel_size % ep:
            problems.append(
                f"expert_parallel_size ({ep}) must divide tensor_parallel_size "
                f"({self.tensor_parallel_size}): the experts are spread over groups of ranks"
            )
        if self.load_format not in ("auto", "dummy"):
            problems.append(f"load_format must be 'auto' or 'dummy', got {self.load_format!r}")
        if problems:
            raise ValueError("; ".join(problems))
