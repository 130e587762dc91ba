"""Linear layer without bias, in bf16/fp32 or FP8 block-quantized form (weight + scale_inv),
whole or split over tensor-parallel ranks."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from m2agent.engine.kernels import dispatch
from m2agent.engine.kernels.reference import FP8_DTYPE, dequantize_fp8_block
from m2agent.engine.layers.loading import Slice, new_parameter, sliced_loader
from m2agent.engine.layers.parallel import SINGLE, TensorParallel
from m2agent.engine.model_config import FP8Config

Split = Literal["columns", "rows"] | None


class Linear(nn.Module):
    """y = x W^T with W [out, in]. With `fp8`, W is float8_e4m3fn and `weight_scale_inv` holds
    one fp32 scale per (block_rows x block_cols) block, exactly as the checkpoint stores them;
    on CUDA the Triton kernel reads them as stored; on CPU they are dequantized on the fly.

    `split="columns"` (of the output; Megatron's column-parallel) keeps this rank's slice of
    the out features: y is this rank's slice of the full y. `split="rows"` keeps a slice of
    the in features: x is this rank's slice, y a partial sum the caller all-reduces."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        dtype: torch.dtype,
        fp8: FP8Config | None,
        split: Split = None,
        tp: TensorParallel = SINGLE,
        name: str = "linear",
    ) -> None:
        super().__init__()
        dim = {"columns": 0, "rows": 1, None: 0}[split]
        part = Slice.of_rank(dim, (out_features, in_features)[dim], tp, name) if split else None
        if part is not None:
            if split == "columns":
                out_features = part.length
            else:
                in_features = part.length
        self.in_features, self.out_features, self.fp8 = in_features, out_features, fp8
        self.weight = new_parameter(
            (out_features, in_features), FP8_DTYPE if fp8 else dtype, sliced_loader(part)
        )
        self.compute_dtype = dtype
        self.weight_scale_inv: nn.Parameter | None = None
        if fp8 is not None:
            scale_shape = (
                math.ceil(out_features / fp8.block_rows),
                math.ceil(in_features / fp8.block_cols),
            )
            block = (fp8.block_rows, fp8.block_cols)[dim]
            scale_part = part.in_blocks(block, name) if part else None
            self.weight_scale_inv = new_parameter(
                scale_shape, torch.float32, sliced_loader(scale_part)
            )

    def dense_weight(self) -> torch.Tensor:
        """The weight in the compute dtype (dequantized when stored as FP8)."""
        if self.fp8 is None or self.weight_scale_inv is None:
            return self.weight
        block = (self.fp8.block_rows, self.fp8.block_cols)
        return dequantize_fp8_block(self.weight, self.weight_scale_inv, block, self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp8 is None or self.weight_scale_inv is None:
            return F.linear(x, self.weight)
        block = (self.fp8.block_rows, self.fp8.block_cols)
        return dispatch.fp8_linear(x, self.weight, self.weight_scale_inv, block)

    def extra_repr(self) -> str:
        kind = f"fp8 block {self.fp8.block_rows}x{self.fp8.block_cols}" if self.fp8 else "dense"
        return f"in={self.in_features}, out={self.out_features}, {kind}"
