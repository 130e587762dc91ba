"""Next-token sampling from fp32 logits: temperature, top-k, top-p, min-p (in that order,
as transformers applies them), then one draw from a seeded generator."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from m2agent.engine.json_mode import JsonObjectConstraint
from m2agent.engine.sampling import SamplingParams

logger = logging.getLogger(__name__)

TOP_CANDIDATES = 64  # a constrained draw that fails looks among this many best tokens first


def _top_k(params: SamplingParams, vocab: int) -> int:
    return params.top_k if params.top_k is not None and 0 < params.top_k < vocab else vocab


def allowed_mask(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Boolean mask [V] of tokens the filters keep for logits [V] (temperature applied): the
    readable reference of `candidates` (which differs only where values tie exactly at the
    k-th place: this keeps every tied token)."""
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
    return int(sample_rows(logits[None], [params], [generator])[0])


def sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """One token per row of logits [B, V] (fp32), row i by params[i] with generators[i] (so a
    seeded row draws the same whatever shares its batch): int64 [B] on the logits' device,
    queued without waiting for the device. A few launches for the whole batch plus one per
    sampling row (its noise), instead of some twenty per row.

    The draw is an exponential race: with E_j ~ Exp(1) independent, argmax_j p_j / E_j is
    token j with probability p_j (p: the filtered, renormalised distribution)."""
    greedy = [p.is_greedy for p in params]
    if all(greedy):
        return logits.argmax(dim=-1)
    ids, probs = candidates(logits, params)
    noise = torch.ones_like(probs)
    vocab = logits.shape[-1]
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if not p.is_greedy:  # as many draws as the row's own candidates: batch-independent
            noise[row, : _top_k(p, vocab)].exponential_(generator=generator)
    choice = (probs / noise.clamp_min_(1e-30)).argmax(dim=-1)
    tokens = ids.gather(1, choice[:, None])[:, 0]
    if any(greedy):
        mask = torch.tensor(greedy).to(logits.device, non_blocking=True)
        tokens = torch.where(mask, logits.argmax(dim=-1), tokens)
    return tokens


def candidates(
    logits: torch.Tensor, params: Sequence[SamplingParams]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's candidate tokens and their filtered probabilities, [B, k] each (k: the
    largest top-k of the batch, the vocabulary where a row has none), best first; tokens the
    filters drop have probability 0. `allowed_mask` is the same filter, one row, readably.
    Greedy rows get their best token alone."""
    vocab = logits.shape[-1]
    rows = []
    for p in params:
        if p.is_greedy:
            rows.append((1.0, 1, 2.0, 0.0))
            continue
        assert p.temperature is not None and p.top_p is not None
        top_p = p.top_p if p.top_p < 1.0 else 2.0  # 1.0 would drop a tail to rounding
        rows.append((p.temperature, _top_k(p, vocab), top_p, p.min_p))
    k = max(int(r[1]) for r in rows)
    table = torch.tensor(rows, dtype=torch.float32).to(logits.device, non_blocking=True)
    temperature, top_k, top_p, min_p = table[:, :, None].unbind(1)
    values, ids = torch.topk(logits / temperature, k, dim=-1)  # sorted, best first
    keep = torch.arange(k, device=logits.device) < top_k
    if any(r[2] < 1.0 for r in rows):  # the smallest set reaching top_p; always >= 1
        probs = torch.softmax(values.masked_fill(~keep, float("-inf")), dim=-1)
        keep &= torch.cumsum(probs, dim=-1) - probs < top_p
    if any(r[3] > 0 for r in rows):
        probs = torch.softmax(values.masked_fill(~keep, float("-inf")), dim=-1)
        keep &= probs >= min_p * probs[:, :1]
    return ids, torch.softmax(values.masked_fill(~keep, float("-inf")), dim=-1)


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
