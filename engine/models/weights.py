"""Checkpoint tensor names -> model parameters, strictly; and dummy weights of the real shapes.

The name table is `checkpoint_target`: identity, except that per-expert tensors load into the
stacked expert parameters. Missing or unexpected tensors raise, naming them. MTP layers
(`model.layers.{L}+` when the config has MTP modules) are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from m2agent.engine.errors import CheckpointError
from m2agent.engine.kernels.reference import quantize_fp8_block
from m2agent.engine.layers.linear import Linear
from m2agent.engine.layers.loading import Checkpoint, Shard, default_loader
from m2agent.engine.layers.moe import Experts
from m2agent.engine.model_config import FP8Config, ModelConfig

_LAYER = re.compile(r"model\.layers\.(\d+)\.")
_EXPERT = re.compile(
    r"(model\.layers\.\d+\.block_sparse_moe\.experts)\.(\d+)\.(w[123])\.(weight(?:_scale_inv)?)"
)


def checkpoint_target(name: str, config: ModelConfig) -> tuple[str, Shard] | None:
    """(parameter name, shard) for a checkpoint tensor, or None for a tensor to skip."""
    layer = _LAYER.match(name)
    if layer and int(layer.group(1)) >= config.num_hidden_layers and config.num_mtp_modules:
        return None  # multi-token-prediction modules: not used for decoding
    if config.tie_word_embeddings and name == "lm_head.weight":
        return None
    expert = _EXPERT.fullmatch(name)
    if expert:
        prefix, index, matrix, suffix = expert.groups()
        if matrix == "w2":
            return f"{prefix}.w2_{suffix}", int(index)
        return f"{prefix}.w13_{suffix}", (int(index), 0 if matrix == "w1" else 1)
    return name, None


def expert_ownership(model: nn.Module) -> dict[str, tuple[range, int]]:
    """Stacked expert parameter name -> (the global expert ids this rank holds, the model's
    number of experts)."""
    found = {}
    for prefix, module in model.named_modules():
        if isinstance(module, Experts):
            for name, _ in module.named_parameters(recurse=False):
                found[f"{prefix}.{name}"] = (module.owned, module.expert_map.shape[0])
    return found


def expected_shards(model: nn.Module) -> set[tuple[str, Shard]]:
    """Every (parameter, shard) this rank loads: expert shards only for the experts it holds."""
    experts = expert_ownership(model)
    shards: set[tuple[str, Shard]] = set()
    for name, _ in model.named_parameters():
        if name not in experts:
            shards.add((name, None))
        elif ".experts.w13" in name:
            shards.update((name, (e, part)) for e in experts[name][0] for part in (0, 1))
        else:
            shards.update((name, e) for e in experts[name][0])
    return shards


def _is_held_elsewhere(shard: Shard, owned: range, num_experts: int) -> bool:
    expert = shard[0] if isinstance(shard, tuple) else shard
    return expert is not None and 0 <= expert < num_experts and expert not in owned


def load_weights(
    model: nn.Module, tensors: Iterable[tuple[str, Checkpoint, Path | str]], where: str
) -> None:
    """Load every tensor into its parameter; raise CheckpointError on anything missing,
    unexpected or mis-shaped. `where` names the checkpoint in messages. Under expert
    parallelism the experts other ranks hold are skipped unread."""
    config: ModelConfig = model.config
    params = dict(model.named_parameters(remove_duplicate=False))
    experts = expert_ownership(model)
    loaded: set[tuple[str, Shard]] = set()
    unexpected: list[str] = []
    for name, tensor, source in tensors:
        target = checkpoint_target(name, config)
        if target is None:
            continue
        param_name, shard = target
        param = params.get(param_name)
        if param is None:
            unexpected.append(f"{name} (in {Path(source).name})")
            continue
        if param_name in experts and _is_held_elsewhere(shard, *experts[param_name]):
            continue
        try:
            param.weight_loader(param, tensor, shard)  # type: ignore[attr-defined]
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {name}: {e}") from None
        loaded.add(target)
    if unexpected:
        raise CheckpointError(
            f"{where}: {len(unexpected)} tensors the model does not have: "
            + _preview(unexpected)
            + " (is config.json for this checkpoint?)"
        )
    missing = sorted(_describe(name, shard) for name, shard in expected_shards(model) - loaded)
    if missing:
        raise CheckpointError(
            f"{where}: {len(missing)} tensors missing from the checkpoint: " + _preview(missing)
        )


def _describe(name: str, shard: Shard) -> str:
    """A missing shard under its checkpoint name: model.layers.0...experts.3.w1.weight."""
    if shard is None:
        return name
    prefix, leaf = name.rsplit(".", 1)  # leaf: w13_weight, w2_weight_scale_inv, ...
    matrix, suffix = leaf.split("_", 1)
    expert, part = (shard, 0) if isinstance(shard, int) else shard
    if matrix == "w13":
        matrix = "w1" if part == 0 else "w3"
    return f"{prefix}.{expert}.{matrix}.{suffix}"


def _preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … and {len(names) - limit} more" if len(names) > limit else "")


@torch.no_grad()
def init_dummy_weights(
    model: nn.Module, seed: int = 0, std: float = 0.02, rank_seed: int | None = None
) -> None:
    """Random weights of the real shapes and dtypes, made on the model's device (FP8 weights are
    quantized from random values, per block, so their scales are realistic). Under tensor or
    expert parallelism each rank passes its own `rank_seed` for its slices; parameters every
    rank holds whole (the routers) come from `seed` alone, so all ranks route alike."""
    first = next(model.parameters())
    generator = torch.Generator(device=first.device).manual_seed(
        seed if rank_seed is None else rank_seed
    )
    shared = generator
    if rank_seed is not None:
        shared = torch.Generator(device=first.device).manual_seed(seed)
    replicated = {id(p) for p in model.parameters() if _is_replicated(p)}

    def normal_(t: torch.Tensor, source: torch.Generator) -> None:
        t.copy_(torch.randn(t.shape, generator=source, device=t.device, dtype=torch.float32))
        t.mul_(std)

    done: set[int] = set()
    for module in model.modules():
        if isinstance(module, Linear) and module.fp8 is not None:
            assert module.weight_scale_inv is not None
            _fill_fp8(module.weight, module.weight_scale_inv, module.fp8, generator, std)
            done.update({id(module.weight), id(module.weight_scale_inv)})
        elif isinstance(module, Experts) and module.fp8 is not None:
            for matrix in ("w13", "w2"):
                weight = getattr(module, f"{matrix}_weight")
                scale = getattr(module, f"{matrix}_weight_scale_inv")
                for e in range(weight.shape[0]):  # one expert at a time bounds the temporary
                    _fill_fp8(weight[e], scale[e], module.fp8, generator, std)
                done.update({id(weight), id(scale)})
    for name, param in model.named_parameters():
        if id(param) in done:
            continue
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        elif name.endswith("e_score_correction_bias"):
            param.zero_()
        else:
            normal_(param.data, shared if id(param) in replicated else generator)


def _is_replicated(param: nn.Parameter) -> bool:
    """Held whole by every rank (its loader takes no slice)."""
    return getattr(param, "weight_loader", None) is default_loader


def _fill_fp8(
    weight: torch.Tensor,
    scale: torch.Tensor,
    fp8: FP8Config,
    generator: torch.Generator,
    std: float,
) -> None:
    dense = torch.randn(weight.shape, generator=generator, device=weight.device) * std
    q, s = quantize_fp8_block(dense, (fp8.block_rows, fp8.block_cols))
    weight.copy_(q)
    scale.copy_(s)
