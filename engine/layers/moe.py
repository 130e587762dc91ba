"""M2's sparse MoE block: fp32 sigmoid router with a selection-only bias, SwiGLU experts.

Under tensor parallelism every rank routes every token (the router is small and replicated)
and holds an even slice of each expert's intermediate size (w1/w3 rows, w2 columns), so the
kernels are unchanged and the ranks' outputs are partial sums, added by one all-reduce.
Under expert parallelism a rank holds only its experts (`TensorParallel.owned_experts`) and
computes only the picks of those: the others weigh zero here and count on the rank that owns
them, so the same one all-reduce combines every token's experts."""

from __future__ import annotations

import math

import torch
from torch import nn

from m2agent.engine.errors import ConfigError
from m2agent.engine.kernels import dispatch
from m2agent.engine.kernels.dispatch import ROUTER_ARRIVALS
from m2agent.engine.kernels.partial_sums import PartialSums, PendingNorm, materialize
from m2agent.engine.kernels.reference import (
    FP8_DTYPE,
    ExpertWeights,
    dequantize_fp8_block,
)
from m2agent.engine.layers.loading import Slice, expert_loader, new_parameter
from m2agent.engine.layers.parallel import SINGLE, TensorParallel
from m2agent.engine.model_config import FP8Config, ModelConfig


class RouterGate(nn.Module):
    """The router's weight [E, C], kept in fp32 as the checkpoint stores it; and the arrival
    counters its one-launch CUDA kernel uses (zero between calls; not part of the checkpoint),
    made with the model so a captured decode graph needs no allocation of its own."""

    arrivals: torch.Tensor

    def __init__(self, num_experts: int, hidden_size: int) -> None:
        super().__init__()
        self.weight = new_parameter((num_experts, hidden_size), torch.float32)
        self.register_buffer(
            "arrivals", torch.zeros(ROUTER_ARRIVALS, dtype=torch.int32), persistent=False
        )


class Experts(nn.Module):
    """All experts' weights stacked, gate and up projections fused as in the GEMM that uses
    them: w13 [E, 2I, C] (rows 0..I-1 are w1, the gate; I..2I-1 are w3, the up projection) and
    w2 [E, C, I]. Checkpoint tensor `experts.{e}.w1.weight` loads into `w13_weight[e, :I]`,
    `w3` into `w13_weight[e, I:]`, `w2` into `w2_weight[e]` (scales likewise, per block).

    Under expert parallelism E is this rank's experts only: `owned` holds their global ids and
    `expert_map` [E_global] maps a global id to its local index, or -1 where another rank
    holds that expert."""

    expert_map: torch.Tensor

    def __init__(
        self,
        num_experts: int,
        hidden: int,
        inter: int,
        dtype: torch.dtype,
        fp8: FP8Config | None,
        tp: TensorParallel = SINGLE,
    ) -> None:
        super().__init__()
        if fp8 is not None and inter % fp8.block_rows:
            raise ConfigError(
                f"intermediate_size {inter} is not a multiple of the FP8 block ({fp8.block_rows})"
            )
        self.owned = tp.owned_experts(num_experts)
        expert_map = torch.full((num_experts,), -1, dtype=torch.long)
        expert_map[self.owned.start : self.owned.stop] = torch.arange(len(self.owned))
        self.register_buffer("expert_map", expert_map, persistent=False)
        num_experts, tp = len(self.owned), tp.expert_tp
        # This rank's slice of the intermediate size, in checkpoint coordinates: rows of w1/w3
        # ([I, C]), columns of w2 ([C, I]).
        slices = {
            "w13": Slice.of_rank(0, inter, tp, "intermediate_size"),
            "w2": Slice.of_rank(1, inter, tp, "intermediate_size"),
        }
        inter = tp.split(inter, "intermediate_size")
        self.fp8, self.compute_dtype, self.intermediate = fp8, dtype, inter
        weight_dtype = FP8_DTYPE if fp8 else dtype
        for name, (rows, cols) in {"w13": (2 * inter, hidden), "w2": (hidden, inter)}.items():
            part = slices[name]
            loader = expert_loader(part, self.owned)
            weight = new_parameter((num_experts, rows, cols), weight_dtype, loader)
            self.register_parameter(f"{name}_weight", weight)
            if fp8 is not None:
                blocks = (math.ceil(rows / fp8.block_rows), math.ceil(cols / fp8.block_cols))
                block = fp8.block_rows if name == "w13" else fp8.block_cols
                scale_part = part.in_blocks(block, f"experts.{name}") if part else None
                scale_loader = expert_loader(scale_part, self.owned)
                scale = new_parameter((num_experts, *blocks), torch.float32, scale_loader)
                self.register_parameter(f"{name}_weight_scale_inv", scale)

    def stored(self) -> ExpertWeights:
        """The weights as stored (FP8 with their scales, or float), for the kernels."""
        if self.fp8 is None:
            return ExpertWeights(self.w13_weight, self.w2_weight)
        return ExpertWeights(
            self.w13_weight,
            self.w2_weight,
            self.w13_weight_scale_inv,
            self.w2_weight_scale_inv,
            (self.fp8.block_rows, self.fp8.block_cols),
        )

    def dense(self, name: str) -> torch.Tensor:
        """`w13` or `w2` in the compute dtype (dequantized when stored as FP8: a full copy, for
        baselines and tests only; the forward pass never makes one)."""
        weight = getattr(self, f"{name}_weight")
        if self.fp8 is None:
            return weight
        block = (self.fp8.block_rows, self.fp8.block_cols)
        scale = getattr(self, f"{name}_weight_scale_inv")
        return dequantize_fp8_block(weight, scale, block, self.compute_dtype)

    @property
    def is_partial(self) -> bool:
        """Whether other ranks hold some of the experts (expert parallelism)."""
        return len(self.owned) < self.expert_map.shape[0]

    def localize(
        self, weights: torch.Tensor, expert_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global picks [T, K] -> this rank's: local ids, and weight 0 for a pick another rank
        owns. Such a pick points at an expert this rank runs anyway (another pick of the same
        token, else of the batch), so the kernels need no notion of ownership and read no
        extra expert unless no token picked one of ours. No host sync: graph-capturable."""
        if expert_ids.numel() == 0:
            return weights, expert_ids
        local = self.expert_map[expert_ids]
        is_owned = local >= 0
        token_pick = local.amax(dim=-1, keepdim=True)  # one of the token's own picks, or -1
        fallback = torch.where(token_pick >= 0, token_pick, local.amax().clamp(min=0))
        return weights * is_owned, torch.where(is_owned, local, fallback)

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, expert_ids: torch.Tensor
    ) -> torch.Tensor | PartialSums:
        """The experts' weighted sum per token; on CUDA (FP8) left as pieces (`PartialSums`)
        for the next fused residual add + RMSNorm to sum."""
        if self.is_partial:
            weights, expert_ids = self.localize(weights, expert_ids)
        return dispatch.moe_experts_parts(x, weights, expert_ids, self.stored())


class SparseMoE(nn.Module):
    def __init__(
        self, config: ModelConfig, dtype: torch.dtype, tp: TensorParallel = SINGLE
    ) -> None:
        super().__init__()
        c, self.tp = config, tp
        self.top_k = c.num_experts_per_tok
        self.gate = RouterGate(c.num_experts, c.hidden_size)
        self.e_score_correction_bias = new_parameter((c.num_experts,), torch.float32)
        self.experts = Experts(
            c.num_experts,
            c.hidden_size,
            c.intermediate_size,
            dtype,
            c.fp8_for("block_sparse_moe.experts"),
            tp,
        )

    def takes_pending_norm(self, x: torch.Tensor) -> bool:
        """Whether `forward` may get its input as a `PendingNorm` of the residual rows x (the
        router kernel finishes it, and writes it for the experts)."""
        return self.tp.size == 1 and dispatch.router_takes_pending_norm(
            x.shape[0], x.shape[1], x.device
        )

    def forward(self, x: torch.Tensor | PendingNorm) -> torch.Tensor | PartialSums:
        gate, bias, arrivals = self.gate.weight, self.e_score_correction_bias, self.gate.arrivals
        if isinstance(x, PendingNorm):
            weights, expert_ids, x = dispatch.route_normed(x, gate, bias, self.top_k, arrivals)
        else:
            weights, expert_ids = dispatch.route(x, gate, bias, self.top_k, arrivals)
        out = self.experts(x, weights, expert_ids)
        if self.tp.size == 1:
            return out
        return self.tp.all_reduce(materialize(out))
