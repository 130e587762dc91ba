"""How a parameter receives a checkpoint tensor: the default loader and the shape/dtype checks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from m2agent.engine.errors import CheckpointError

WeightLoader = Callable[[nn.Parameter, torch.Tensor, "int | None"], None]


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


def default_loader(param: nn.Parameter, tensor: torch.Tensor, shard: int | None) -> None:
    if shard is not None:
        raise CheckpointError(f"unexpected shard {shard} for an unsharded parameter")
    copy_checked(param.data, tensor)


def expert_loader(param: nn.Parameter, tensor: torch.Tensor, shard: int | None) -> None:
    """Stacked expert weights [E, ...]: shard is the expert index."""
    if shard is None or not 0 <= shard < param.shape[0]:
        raise CheckpointError(f"expert index {shard} out of range 0..{param.shape[0] - 1}")
    copy_checked(param.data[shard], tensor)


def new_parameter(
    shape: tuple[int, ...], dtype: torch.dtype, loader: WeightLoader = default_loader
) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    param.weight_loader = loader  # type: ignore[attr-defined]
    return param
