"""How a parameter receives a checkpoint tensor: the default loader and the shape/dtype checks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from m2agent.engine.errors import CheckpointError

Shard = int | tuple[int, int] | None
WeightLoader = Callable[[nn.Parameter, torch.Tensor, Shard], None]


def copy_checked(target: torch.Tensor, tensor: torch.Tensor) -> None:
    """Copy `tensor` into `target` after checking shape and (for FP8) dtype."""
    if tuple(tensor.shape) != tuple(target.shape):
        raise CheckpointError(
            f"shape {list(tensor.shape)} does not match the model's {list(target.shape)} "
            "(does config.json belong to these weights?)"
        )
    is_fp8_target = target.dtype == torch.float8_e4m3fn
    if is_fp8_target != (tensor.dtype == torch.float8_e4m3fn):
        expected = "float8_e4m3fn" if is_fp8_target else "a float dtype (bf16/fp16/fp32)"
        raise CheckpointError(
            f"dtype {tensor.dtype} but the model expects {expected} "
            "(check quantization_config in config.json)"
        )
    with torch.no_grad():
        target.copy_(tensor)


def default_loader(param: nn.Parameter, tensor: torch.Tensor, shard: Shard) -> None:
    if shard is not None:
        raise CheckpointError(f"unexpected shard {shard} for an unsharded parameter")
    copy_checked(param.data, tensor)


def expert_loader(param: nn.Parameter, tensor: torch.Tensor, shard: Shard) -> None:
    """Stacked expert weights [E, rows, cols]. Shard `e` fills expert e; `(e, part)` fills
    part `part` of `parts` equal row slices of a fused matrix (w1 then w3 in w13)."""
    expert, part, parts = (
        (shard, 0, 1) if isinstance(shard, int) else (*shard, 2) if shard else (-1, 0, 1)
    )
    if not 0 <= expert < param.shape[0]:
        raise CheckpointError(f"expert index {expert} out of range 0..{param.shape[0] - 1}")
    rows = param.shape[1] // parts
    copy_checked(param.data[expert, part * rows : (part + 1) * rows], tensor)


def new_parameter(
    shape: tuple[int, ...], dtype: torch.dtype, loader: WeightLoader = default_loader
) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    param.weight_loader = loader  # type: ignore[attr-defined]
    return param
