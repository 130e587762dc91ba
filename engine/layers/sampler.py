"""Next-token sampling from fp32 logits: temperature, top-k, top-p, min-p (in that order,
as transformers applies them), then one draw from a seeded generator."""

from __future__ import annotations

import logging

import torch

from m2agent.engine.json_mode import JsonObjectConstraint
from m2agent.engine.sampling import SamplingParams

logger = logging.getLogger(__name__)

TOP_CANDIDATES = 64  # a constrained draw that fails looks among this many best tokens first


def allowed_mask(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Boolean mask [V] of tokens the filters keep for logits [V] (temperature applied)."""
    assert params.temperature is not None and params.top_p is not None
    scaled = logits / params.temperature
    keep = torch.ones_like(scaled, dtype=torch.bool)
    top_k = params.top_k or 0
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k).values[-1]
        keep &= scaled >= kth
    if params.top_p < 1.0:
        probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
        sorted_probs, order = torch.sort(probs, descending=True)
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        keep_sorted = mass_before < params.top_p  # smallest set reaching top_p; always >= 1
        keep &= torch.zeros_like(keep).scatter(0, order, keep_sorted)
    if params.min_p > 0:
        probs = torch.softmax(scaled.masked_fill(~keep, float("-inf")), dim=-1)
        keep &= probs >= params.min_p * probs.max()
    return keep


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from logits [V] (fp32). Greedy when temperature is 0."""
    return int(sample_on_device(logits, params, generator))


def sample_on_device(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> torch.Tensor:
    """`sample`'s token as a 0-d int64 tensor on the logits' device, without waiting for the
    device (the same draw: the same kernels, the same generator)."""
    if params.is_greedy:
        return torch.argmax(logits)
    assert params.temperature is not None
    keep = allowed_mask(logits, params)
    probs = torch.softmax((logits / params.temperature).masked_fill(~keep, float("-inf")), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[0]


def sample_constrained(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    constraint: JsonObjectConstraint,
) -> int:
    """One token id that `constraint` allows. The usual draw first (free when it passes);
    otherwise the draw is repeated over the allowed tokens among the `TOP_CANDIDATES` best,
    and, when none of those is allowed, over every allowed token of the vocabulary."""
    token = sample(logits, params, generator)
    if constraint.allows(token):
        return token
    best = torch.topk(logits, min(TOP_CANDIDATES, logits.shape[-1])).indices.tolist()
    allowed = [t for t in best if constraint.allows(t)] or constraint.allowed_ids()
    if not allowed:
        logger.warning("JSON mode: no token of this vocabulary continues the output; unconstrained")
        constraint.give_up()
        return token
    if len(allowed) == 1:
        return allowed[0]
    index = torch.tensor(allowed, device=logits.device)
    masked = torch.full_like(logits, float("-inf")).index_copy(0, index, logits[index])
    return sample(masked, params, generator)
