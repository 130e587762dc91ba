"""How many tokens of KV cache fit beside the weights, per parallel layout, computed from a
config (no GPU needed): each rank's weight bytes from the model built on the meta device with
that rank's slices, its KV bytes per token (its share of the KV heads), and the memory left on
the tightest rank. The engine sizes its pool the same way at start-up, measured instead of
estimated (`ModelRunner.measure_kv_budget`, the minimum over ranks)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from m2agent.engine.layers.parallel import TensorParallel
from m2agent.engine.model_config import ModelConfig
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.runner.workers import default_expert_parallel

GIB = 1 << 30


@dataclass(frozen=True, slots=True)
class LayoutCapacity:
    gpus: int
    expert_parallel_size: int
    weight_bytes_per_rank: int  # the largest rank's
    kv_bytes_per_token_per_rank: int
    kv_tokens: int  # tokens of context the tightest rank's pool holds (all sequences together)


@dataclass(frozen=True, slots=True)
class CapacityReport:
    gpu_bytes: int
    utilization: float
    reserve_bytes: int  # per GPU, for activations, CUDA graphs and communication buffers
    layouts: list[LayoutCapacity]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lines = [
            f"GPU memory {self.gpu_bytes / GIB:.1f} GiB x {self.utilization:.2f} utilization, "
            f"{self.reserve_bytes / GIB:.1f} GiB reserved per GPU for activations",
            f"{'GPUs':>4} {'ep':>3} {'weights/GPU GiB':>16} {'KV/token/GPU KiB':>17} "
            f"{'KV tokens':>12}",
        ]
        for c in self.layouts:
            lines.append(
                f"{c.gpus:4d} {c.expert_parallel_size:3d} {c.weight_bytes_per_rank / GIB:16.1f} "
                f"{c.kv_bytes_per_token_per_rank / 1024:17.1f} {c.kv_tokens:12,d}"
            )
        return "\n".join(lines)


def weight_bytes(config: ModelConfig, tp: TensorParallel, dtype: torch.dtype) -> int:
    """Bytes of one rank's parameters (FP8 weights and their scales as stored)."""
    with torch.device("meta"):
        model = MiniMaxM2ForCausalLM(config, dtype, tp)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def layout_capacity(
    config: ModelConfig,
    gpus: int,
    gpu_bytes: int,
    utilization: float,
    reserve_bytes: int,
    expert_parallel_size: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> LayoutCapacity:
    ep = expert_parallel_size or default_expert_parallel(config, gpus)
    weights = max(
        weight_bytes(config, TensorParallel(rank, gpus, None, ep), dtype) for rank in range(gpus)
    )
    kv_heads = TensorParallel(0, gpus).split(config.num_key_value_heads, "num_key_value_heads")
    per_token = 2 * config.num_hidden_layers * kv_heads * config.head_dim * dtype.itemsize
    free = int(gpu_bytes * utilization) - weights - reserve_bytes
    return LayoutCapacity(gpus, ep, weights, per_token, max(0, free) // per_token)


def capacity_report(
    config: ModelConfig,
    gpu_counts: list[int],
    gpu_bytes: int,
    utilization: float = 0.90,
    reserve_bytes: int = 4 * GIB,
) -> CapacityReport:
    layouts = [
        layout_capacity(config, n, gpu_bytes, utilization, reserve_bytes) for n in gpu_counts
    ]
    return CapacityReport(gpu_bytes, utilization, reserve_bytes, layouts)
