"""M2's sparse MoE block: fp32 sigmoid router with a selection-only bias, SwiGLU experts."""

from __future__ import annotations

import math

import torch
from torch import nn

from m2agent.engine.kernels import dispatch
from m2agent.engine.kernels.reference import FP8_DTYPE, dequantize_fp8_block, route
from m2agent.engine.layers.loading import expert_loader, new_parameter
from m2agent.engine.model_config import FP8Config, ModelConfig


class RouterGate(nn.Module):
    """The router's weight [E, C], kept in fp32 as the checkpoint stores it."""

    def __init__(self, num_experts: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = new_parameter((num_experts, hidden_size), torch.float32)


class Experts(nn.Module):
    """All experts' weights stacked: w1, w3 [E, I, C] and w2 [E, C, I]; checkpoint tensor
    `experts.{e}.w1.weight` loads into `w1_weight[e]` (and likewise for scales)."""

    def __init__(
        self, num_experts: int, hidden: int, inter: int, dtype: torch.dtype, fp8: FP8Config | None
    ) -> None:
        super().__init__()
        self.fp8, self.compute_dtype = fp8, dtype
        shapes = {"w1": (inter, hidden), "w3": (inter, hidden), "w2": (hidden, inter)}
        for name, (rows, cols) in shapes.items():
            weight_dtype = FP8_DTYPE if fp8 else dtype
            weight = new_parameter((num_experts, rows, cols), weight_dtype, expert_loader)
            self.register_parameter(f"{name}_weight", weight)
            if fp8 is not None:
                blocks = (math.ceil(rows / fp8.block_rows), math.ceil(cols / fp8.block_cols))
                scale = new_parameter((num_experts, *blocks), torch.float32, expert_loader)
                self.register_parameter(f"{name}_weight_scale_inv", scale)

    def dense(self, name: str) -> torch.Tensor:
        weight = getattr(self, f"{name}_weight")
        if self.fp8 is None:
            return weight
        block = (self.fp8.block_rows, self.fp8.block_cols)
        scale = getattr(self, f"{name}_weight_scale_inv")
        return dequantize_fp8_block(weight, scale, block, self.compute_dtype)

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor
    ) -> torch.Tensor:
        w1, w3, w2 = self.dense("w1"), self.dense("w3"), self.dense("w2")
        return dispatch.moe_experts(x, weights, expert_ids, w1, w3, w2)


class SparseMoE(nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        c = config
        self.top_k = c.num_experts_per_tok
        self.gate = RouterGate(c.num_experts, c.hidden_size)
        self.e_score_correction_bias = new_parameter((c.num_experts,), torch.float32)
        self.experts = Experts(
            c.num_experts,
            c.hidden_size,
            c.intermediate_size,
            dtype,
            c.fp8_for("block_sparse_moe.experts"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, expert_ids = route(x, self.gate.weight, self.e_score_correction_bias, self.top_k)
        return self.experts(x, weights, expert_ids)
