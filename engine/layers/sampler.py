"""Next-token sampling from fp32 logits: temperature, top-k, top-p, min-p (in that order,
as transformers applies them), then one draw from a seeded generator."""

from __future__ import annotations

import torch

from m2agent.engine.sampling import SamplingParams


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
    if params.is_greedy:
        return int(torch.argmax(logits))
    assert params.temperature is not None
    keep = allowed_mask(logits, params)
    probs = torch.softmax((logits / params.temperature).masked_fill(~keep, float("-inf")), dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
