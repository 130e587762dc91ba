"""Start-up warm-up: build every Triton kernel variant an eager step can need before the first
request, so none is built inside one (a build takes 0.2-1 s; measured on an H200, the first
64-stream round of `bench throughput` lost 0.8 s to one).

Triton builds a variant per new key: constexprs (tiles per token-count bucket, split-K pieces)
and integer specializations (1, multiples of 16). Decode graphs are captured for every batch
size at start-up, which builds their variants; an eager step (prefill chunks, mixed prefill +
decode, JSON mode) of T tokens can need new ones. The kernels say which of their variant's
parts depend on T (`fp8_linear.variant`, `fp8_moe.variant`); `token_counts` keeps the smallest
T of each distinct combination (every T up to `SMALL`, where buckets, router blocks and
specializations all change), and the runner runs one eager step of each. Not covered: eager
decode steps with the decode graphs off (`cuda_graphs=False`), whose split-KV attention picks
its split count per batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator

import torch
from torch import nn

from m2agent.engine.kernels.reference import ExpertWeights
from m2agent.engine.layers.linear import FusedRows, Linear
from m2agent.engine.layers.moe import Experts
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM

SMALL = 64  # every token count up to this is its own case


def token_counts(max_tokens: int, key: Callable[[int], Hashable]) -> list[int]:
    """The smallest token count in 1..max_tokens of each distinct `key`, and max_tokens."""
    seen: set[Hashable] = set()
    counts = []
    for tokens in range(1, max_tokens + 1):
        k = (min(tokens, SMALL + 1), key(tokens))
        if k not in seen:
            seen.add(k)
            counts.append(tokens)
    if counts and counts[-1] != max_tokens:
        counts.append(max_tokens)  # the largest step's activations, once
    return counts


def _fp8_linear_shapes(model: nn.Module) -> Iterator[tuple[int, int, tuple[int, int]]]:
    """(N, K, block) of every FP8 product a step runs: each Linear and each fused one."""
    seen = set()
    for module in model.modules():
        found: list[tuple[int, int, tuple[int, int]]] = []
        if isinstance(module, Linear) and module.fp8 is not None:
            fp8 = module.fp8
            block = (fp8.block_rows, fp8.block_cols)
            found.append((module.out_features, module.in_features, block))
        for value in vars(module).values():
            if isinstance(value, FusedRows) and value.linears[0].fp8 is not None:
                weight, fp8 = value.weight, value.linears[0].fp8
                block = (fp8.block_rows, fp8.block_cols)
                found.append((weight.shape[0], weight.shape[1], block))
        for shape in found:
            if shape not in seen:
                seen.add(shape)
                yield shape


def _experts(model: nn.Module) -> Iterator[ExpertWeights]:
    """The experts that run on `fp8_moe`'s kernels: FP8, or spread over ranks."""
    seen = set()
    for module in model.modules():
        if isinstance(module, Experts) and (module.fp8 is not None or module.is_partial):
            stored = module.stored()
            shape = (tuple(stored.w13.shape), tuple(stored.w2.shape), stored.is_fp8)
            if shape not in seen:
                seen.add(shape)
                yield stored


def variant_key(model: MiniMaxM2ForCausalLM, device: torch.device) -> Callable[[int], Hashable]:
    """T -> what of the model's eager-step kernel variants depends on T (CUDA kernels)."""
    from m2agent.engine.kernels import fp8_linear, fp8_moe  # Triton: CUDA machines only

    linears = list(_fp8_linear_shapes(model))
    experts = list(_experts(model))
    top_k = model.config.num_experts_per_tok

    def key(tokens: int) -> Hashable:
        parts: list[object] = [tokens % 16 == 0, tokens % 2 == 0]
        parts += [fp8_linear.variant(tokens, n, k, block, device) for n, k, block in linears]
        parts += [fp8_moe.variant(tokens, top_k, e, device) for e in experts]
        return tuple(parts)

    return key
