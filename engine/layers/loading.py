"""How a parameter receives a checkpoint tensor: the loaders (whole, or this rank's slice under
tensor parallelism) and the shape/dtype checks. A checkpoint tensor may still be on disk
(`TensorSource`): then only this rank's slice of it is read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from m2agent.engine.errors import CheckpointError, ConfigError
from m2agent.engine.layers.parallel import TensorParallel


class TensorSource(Protocol):
    """A checkpoint tensor not read yet (`models.checkpoint.StoredTensor`)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def read(self) -> torch.Tensor: ...

    def read_slice(self, dim: int, start: int, length: int) -> torch.Tensor: ...


Checkpoint = torch.Tensor | TensorSource
Shard = int | tuple[int, int] | None
WeightLoader = Callable[[nn.Parameter, Checkpoint, Shard], None]


@dataclass(frozen=True, slots=True)
class Slice:
    """The part of a checkpoint tensor this rank holds: `length` entries from `start` along
    `dim`, of a dimension `full` long. The parameter is `length` long there; where the tensor
    ends early (the last rank of a padded split) the rest is zero."""

    dim: int
    start: int
    length: int
    full: int

    @classmethod
    def of_rank(cls, dim: int, full: int, tp: TensorParallel, what: str) -> Slice | None:
        """The even split of `full` over the ranks (None when there is one rank)."""
        if tp.size == 1:
            return None
        length = tp.split(full, what)
        return cls(dim, tp.rank * length, length, full)

    @classmethod
    def padded(cls, dim: int, full: int, tp: TensorParallel) -> Slice | None:
        """ceil(full / size) per rank; the last rank's tail is padding."""
        if tp.size == 1:
            return None
        length = tp.padded_split(full)
        return cls(dim, tp.rank * length, length, full)

    def in_blocks(self, block: int, what: str) -> Slice:
        """The same slice of a per-block scale tensor (FP8): the cut must fall on blocks."""
        if self.start % block or self.length % block:
            raise ConfigError(
                f"{what}: a tensor-parallel slice of {self.length} does not fall on the "
                f"FP8 block size {block}; use a smaller tensor-parallel size, or expert "
                "parallelism (--ep) to keep experts whole"
            )
        return Slice(self.dim, self.start // block, self.length // block, -(-self.full // block))


def check_shape(target: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(target.shape):
        raise CheckpointError(
            f"shape {list(shape)} does not match the model's {list(target.shape)} "
            "(does config.json belong to these weights?)"
        )


def copy_checked(target: torch.Tensor, tensor: torch.Tensor) -> None:
    """Copy `tensor` into `target` after checking shape and (for FP8) dtype."""
    check_shape(target, tuple(tensor.shape))
    is_fp8_target = target.dtype == torch.float8_e4m3fn
    if is_fp8_target != (tensor.dtype == torch.float8_e4m3fn):
        expected = "float8_e4m3fn" if is_fp8_target else "a float dtype (bf16/fp16/fp32)"
        raise CheckpointError(
            f"dtype {tensor.dtype} but the model expects {expected} "
            "(check quantization_config in config.json)"
        )
    with torch.no_grad():
        target.copy_(tensor)


def read(
    tensor: Checkpoint, dim: int | None = None, start: int = 0, length: int = 0
) -> torch.Tensor:
    """All of `tensor`, or `length` entries from `start` along `dim`, in memory."""
    if isinstance(tensor, torch.Tensor):
        return tensor if dim is None else tensor.narrow(dim, start, length)
    return tensor.read() if dim is None else tensor.read_slice(dim, start, length)


def copy_slice(target: torch.Tensor, tensor: Checkpoint, part: Slice | None) -> None:
    """Copy this rank's slice of `tensor` (all of it without a slice) into `target`, reading
    no more of it than that."""
    if part is None:
        check_shape(target, tuple(tensor.shape))  # before reading a tensor that cannot fit
        copy_checked(target, read(tensor))
        return
    if len(tensor.shape) <= part.dim or tensor.shape[part.dim] != part.full:
        raise CheckpointError(
            f"shape {list(tensor.shape)}: expected {part.full} along dimension {part.dim} "
            "(does config.json belong to these weights?)"
        )
    available = max(0, min(part.length, part.full - part.start))
    copy_checked(
        target.narrow(part.dim, 0, available), read(tensor, part.dim, part.start, available)
    )
    if available < part.length:
        with torch.no_grad():
            target.narrow(part.dim, available, part.length - available).zero_()


def sliced_loader(part: Slice | None) -> WeightLoader:
    """Loads a whole tensor (`part` None) or this rank's slice of it."""

    def load(param: nn.Parameter, tensor: Checkpoint, shard: Shard) -> None:
        if shard is not None:
            raise CheckpointError(f"unexpected shard {shard} for an unsharded parameter")
        copy_slice(param.data, tensor, part)

    return load


default_loader = sliced_loader(None)


def expert_loader(part: Slice | None = None, owned: range | None = None) -> WeightLoader:
    """Stacked expert weights [E, rows, cols]. Shard `e` fills expert e; `(e, p)` fills part p
    of 2 equal row slices of a fused matrix (w1 then w3 in w13). With `part`, each checkpoint
    matrix contributes this rank's slice of it. With `owned` (expert parallelism) the
    parameter holds only those experts: shard ids are global, and `owned[i]` fills row i."""

    def load(param: nn.Parameter, tensor: Checkpoint, shard: Shard) -> None:
        expert, index, parts = (
            (shard, 0, 1) if isinstance(shard, int) else (*shard, 2) if shard else (-1, 0, 1)
        )
        held = owned if owned is not None else range(param.shape[0])
        if expert not in held:
            raise CheckpointError(
                f"expert index {expert} is not held here ({held.start}..{held.stop - 1})"
            )
        rows = param.shape[1] // parts
        local = expert - held.start
        copy_slice(param.data[local, index * rows : (index + 1) * rows], tensor, part)

    return load


def new_parameter(
    shape: tuple[int, ...], dtype: torch.dtype, loader: WeightLoader = default_loader
) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    param.weight_loader = loader  # type: ignore[attr-defined]
    return param
