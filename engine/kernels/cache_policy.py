"""The L2 policy of the weights a decode step streams once: evict first.

A small batch's GEMVs read every weight byte once per step, then nothing of it again until the
next step (megabytes later: far past what L2 holds). Loaded with the default policy those
bytes push out of L2 what the next kernel reads back: the split-K pieces, activations and
norms that one kernel writes for the next. Loaded `evict_first`, the weights make room for
each other instead (H200, FP8 batch-1 step, 6 -> 18 layers: the MoE experts' and the dense
GEMVs' weights together 2.7 us less per layer, 70.5 -> 67.8; docs/bench/i12/round5). The
router's weight and the KV cache read the same way measured no different (at 512 and 64K
tokens of context), so they keep the default.

`M2AGENT_EVICT_FIRST` = "0" turns it off, or names the kinds that keep it ("moe,dense"; A/B
timing); on CPU (Triton's interpreter) the policy is the default.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "M2AGENT_EVICT_FIRST"
KINDS = ("moe", "dense")  # the MoE's expert GEMVs; the dense GEMVs (q/k/v, o_proj)


def streamed_eviction(kind: str, device: torch.device) -> str:
    """The `eviction_policy` for the streamed loads of `kind` (one of KINDS) on `device`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: one of {KINDS}")
    if device.type != "cuda":
        return ""
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in ("0", "off", "false", "no", "none"):
        return ""
    if value in ("1", "on", "true", "yes", "all"):
        return "evict_first"
    return "evict_first" if kind in value.split(",") else ""
