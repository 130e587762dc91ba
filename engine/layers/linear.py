"""Linear layer without bias, in bf16/fp32 or FP8 block-quantized form (weight + scale_inv),
whole or split over tensor-parallel ranks."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from m2agent.engine.kernels import dispatch
from m2agent.engine.kernels.partial_sums import PartialSums, PendingNorm, materialize
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

    def forward_parts(self, x: torch.Tensor) -> torch.Tensor | PartialSums:
        """y, or (FP8 on CUDA) y left as split-K pieces for a consumer that sums them."""
        if self.fp8 is None or self.weight_scale_inv is None:
            return F.linear(x, self.weight)
        block = (self.fp8.block_rows, self.fp8.block_cols)
        return dispatch.fp8_linear_parts(x, self.weight, self.weight_scale_inv, block)

    def extra_repr(self) -> str:
        kind = f"fp8 block {self.fp8.block_rows}x{self.fp8.block_cols}" if self.fp8 else "dense"
        return f"in={self.in_features}, out={self.out_features}, {kind}"


class FusedRows:
    """Linears over the same input whose weights are row blocks of one tensor, so one launch
    computes all of them (M2's q/k/v). Made before any weight is loaded: each Linear's weight
    (and FP8 scale) is re-pointed at its rows of a fresh fused tensor, so the checkpoint loads
    into place and nothing is ever copied or held twice. `fuse` returns None where the weights
    cannot share a tensor (different FP8 configs, or FP8 rows not on scale-block bounds)."""

    def __init__(self, linears: list[Linear], weight: torch.Tensor, scale: torch.Tensor | None):
        self.linears, self.weight, self.scale = linears, weight, scale
        self.widths = [lin.out_features for lin in linears]

    @classmethod
    def fuse(cls, linears: list[Linear]) -> FusedRows | None:
        first = linears[0]
        fp8 = first.fp8
        if any(lin.fp8 != fp8 or lin.in_features != first.in_features for lin in linears):
            return None
        if fp8 is not None and any(lin.out_features % fp8.block_rows for lin in linears):
            return None
        rows = sum(lin.out_features for lin in linears)
        old = first.weight
        weight = torch.empty((rows, first.in_features), dtype=old.dtype, device=old.device)
        scale = None
        scales = [lin.weight_scale_inv for lin in linears if lin.weight_scale_inv is not None]
        if scales:
            old_scale = scales[0]
            scale_rows = sum(s.shape[0] for s in scales)
            scale = torch.empty(
                (scale_rows, old_scale.shape[1]), dtype=old_scale.dtype, device=old_scale.device
            )
        row = scale_row = 0
        for lin in linears:
            lin.weight = _view_parameter(lin.weight, weight[row : row + lin.out_features])
            row += lin.out_features
            if scale is not None and lin.weight_scale_inv is not None:
                n = lin.weight_scale_inv.shape[0]
                lin.weight_scale_inv = _view_parameter(
                    lin.weight_scale_inv, scale[scale_row : scale_row + n]
                )
                scale_row += n
        return cls(linears, weight, scale)

    def takes_pending_norm(self, x: torch.Tensor) -> bool:
        """Whether a call on the norm of x (rows of the residual stream) can take it as a
        `PendingNorm`: FP8 rows still fused, and a one-row product on CUDA."""
        return (
            self.linears[0].fp8 is not None
            and self.scale is not None
            and self.intact()
            and dispatch.fp8_linear_takes_pending_norm(x.shape[0], x.device)
        )

    def intact(self) -> bool:
        """Whether the Linears still hold views of the fused tensor (a `.to()` would copy)."""
        return all(
            lin.weight.data_ptr() == self.weight[start:].data_ptr()
            for lin, start in zip(self.linears, self._starts(), strict=True)
        )

    def _starts(self) -> list[int]:
        starts, at = [], 0
        for width in self.widths:
            starts.append(at)
            at += width
        return starts

    def __call__(self, x: torch.Tensor | PendingNorm) -> list[torch.Tensor | PartialSums]:
        """Each Linear's output (views of one product's columns). x may be a `PendingNorm`
        (see `takes_pending_norm`)."""
        fp8 = self.linears[0].fp8
        if fp8 is None or self.scale is None:
            y: torch.Tensor | PartialSums = F.linear(materialize(x), self.weight)
        else:
            block = (fp8.block_rows, fp8.block_cols)
            y = dispatch.fp8_linear_parts(x, self.weight, self.scale, block)
        outs: list[torch.Tensor | PartialSums] = []
        for start, width in zip(self._starts(), self.widths, strict=True):
            if isinstance(y, PartialSums):
                outs.append(y.columns(start, width))
            else:
                outs.append(y[:, start : start + width])
        return outs


def _view_parameter(old: nn.Parameter, view: torch.Tensor) -> nn.Parameter:
    """A parameter over `view` that loads like `old` (same weight_loader)."""
    param = nn.Parameter(view, requires_grad=False)
    param.weight_loader = old.weight_loader  # type: ignore[attr-defined]
    return param
