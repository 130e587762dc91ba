"""Weights into L2 ahead of the kernel that reads them, while the decode step's small kernels
leave HBM idle.

A batch-1 decode step alternates kernels that stream weights (the GEMVs) with kernels that
read almost nothing (norms, QK-norm + RoPE, attention over a short context, the router). The
weights of the next GEMV are known before its inputs are: this kernel asks the copy engine of
each SM (`cp.async.bulk.prefetch.L2`, sm_90+) to bring a weight's bytes into L2 and returns at
once, so they stream from HBM while the small kernels run, and the GEMV then reads them from
L2. With `evict_last` the prefetched lines outlast the bulk traffic in between (the MoE's
expert weights, a long context's KV).

It reads nothing and writes nothing, and runs on a side stream (a parallel branch of a
captured graph, joined at the end of the step), off the chain of the step's kernels.
Prefetching is a hint: what it brings in or not never changes a result, only where the GEMV's
loads are served from.

`M2AGENT_L2_PREFETCH` picks the targets (`pick`; "off" for A/B timing); on sm_90+ only.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels.occupancy import sm_count

ENV_VAR = "M2AGENT_L2_PREFETCH"
EVICT_ENV_VAR = "M2AGENT_L2_EVICT_LAST"
MOE_EVICT_ENV_VAR = "M2AGENT_MOE_EVICT_FIRST"
_SIDE: dict[int, torch.cuda.Stream] = {}  # per device: the stream prefetches run on
_FORKED: set[torch.cuda.Stream] = set()  # side streams with prefetches not yet joined
TARGETS = ("o", "qkv")  # o_proj during attention; the next layer's q/k/v during the MoE
LANES = 32  # one warp per program: each lane issues one bulk prefetch per range
ALIGN = 16  # cp.async.bulk: 16-byte aligned address and size
L2_SHARE = 0.6  # of L2, the most one prefetch takes (M2's FP8 q/k/v: 25 MB of an H200's 50)


@triton.jit
def _bulk_prefetch(addr, size, EVICT_LAST: tl.constexpr):
    """Each lane: prefetch `size` bytes (a multiple of 16, may be 0) at `addr` into L2.
    (Triton takes the assembly only as a literal in the call.)"""
    if EVICT_LAST:
        tl.inline_asm_elementwise(
            """{
            .reg .pred p;
            .reg .b64 policy;
            setp.gt.s32 p, $2, 0;
            createpolicy.fractional.L2::evict_last.b64 policy, 1.0;
            @p cp.async.bulk.prefetch.L2.global.L2::cache_hint [$1], $2, policy;
            mov.u32 $0, 0;
            }""",
            "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip
    else:
        tl.inline_asm_elementwise(
            """{
            .reg .pred p;
            setp.gt.s32 p, $2, 0;
            @p cp.async.bulk.prefetch.L2.global [$1], $2;
            mov.u32 $0, 0;
            }""",
            "=r,l,r", [addr, size], dtype=tl.int32, is_pure=False, pack=1,
        )  # fmt: skip


@triton.jit
def _range_share(base, nbytes, per_lane, LANES_: tl.constexpr):
    """This program's lanes' shares of [base, base + nbytes): (addresses, sizes)."""
    lane = tl.program_id(0).to(tl.int64) * LANES_ + tl.arange(0, LANES_)
    start = lane * per_lane
    size = tl.minimum(tl.maximum(nbytes - start, 0), per_lane)
    size = (size // 16) * 16
    return base + start, size.to(tl.int32)


@triton.jit
def _l2_prefetch_kernel(
    base0,  # int64 addresses (the weights never move: a captured graph keeps them valid)
    nbytes0,
    per_lane0,
    base1,
    nbytes1,
    per_lane1,
    LANES_: tl.constexpr,
    EVICT_LAST: tl.constexpr,
):
    addr, size = _range_share(base0, nbytes0, per_lane0, LANES_)
    _bulk_prefetch(addr, size, EVICT_LAST)
    addr, size = _range_share(base1, nbytes1, per_lane1, LANES_)
    _bulk_prefetch(addr, size, EVICT_LAST)


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pick(target: str, device: torch.device) -> bool:
    """Whether to prefetch `target` (one of TARGETS) on `device`: sm_90+ and not turned off
    (`M2AGENT_L2_PREFETCH`: "off", or a comma list of targets; default all)."""
    if device.type != "cuda":
        return False
    value = os.environ.get(ENV_VAR, "all").strip().lower()
    if value in ("0", "off", "false", "no", "none"):
        return False
    if value not in ("1", "on", "all", "") and target not in value.split(","):
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def streaming_eviction(device: torch.device) -> str:
    """The L2 policy for weights read once a step (the MoE's experts): "evict_first" while
    prefetching is on, so they do not push the prefetched lines out, else the default ("").
    `M2AGENT_MOE_EVICT_FIRST` = 1 / 0 forces it on / off (A/B timing)."""
    value = os.environ.get(MOE_EVICT_ENV_VAR, "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return ""
    if value in ("1", "on", "true", "yes"):
        return "evict_first" if device.type == "cuda" else ""
    return "evict_first" if any(pick(target, device) for target in TARGETS) else ""


def _evict_last() -> bool:
    return os.environ.get(EVICT_ENV_VAR, "1").strip().lower() not in ("0", "off", "false", "no")


def _share(tensor: torch.Tensor | None, programs: int) -> tuple[int, int, int]:
    if tensor is None or tensor.numel() == 0:
        return 0, 0, 0
    if not tensor.is_contiguous():
        raise ValueError("l2_prefetch needs contiguous tensors")
    nbytes = tensor.numel() * tensor.element_size()
    base = tensor.data_ptr()
    if base % ALIGN:  # round the start up to the alignment, drop those few bytes
        skip = ALIGN - base % ALIGN
        base, nbytes = base + skip, max(0, nbytes - skip)
    per_lane = -(-nbytes // (programs * LANES))
    per_lane = -(-per_lane // ALIGN) * ALIGN
    return base, nbytes, per_lane


@functools.cache
def _l2_bytes(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).L2_cache_size)


def l2_budget(device: torch.device) -> int:
    """The most bytes one prefetch asks for: a share of L2 that leaves room for the weight
    read before it and for the step's activations (bf16 projections of M2 do not fit)."""
    if device.type != "cuda":  # Triton's interpreter (CPU tensors): an H100's 50 MB
        return int(L2_SHARE * 50 * 2**20)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(L2_SHARE * _l2_bytes(index))


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE:
        _SIDE[index] = torch.cuda.Stream(device=index)
    return _SIDE[index]


def l2_prefetch(weight: torch.Tensor, scale: torch.Tensor | None = None) -> None:
    """Start bringing `weight` (and its `scale`) into L2; returns at once (one launch, one
    program per SM). A weight larger than `l2_budget` is left alone.

    The launch goes to a side stream that forks from the current one here (under graph
    capture: a parallel branch), so the step's chain of kernels never waits for the bytes to
    arrive: a kernel completes only when its bulk prefetches have landed, and in the chain
    that would put the whole transfer on the step's critical path (measured on an H200: a
    prefetch in the chain made every layer slower by about its transfer time). `join` ends
    the branch; call it before the step's last kernel (and before a capture ends)."""
    if weight.numel() * weight.element_size() > l2_budget(weight.device):
        return
    programs = sm_count(weight.device)
    args = (*_share(weight, programs), *_share(scale, programs))
    if weight.device.type != "cuda":  # (scripts/compile_check.py: CPU tensors, nothing runs)
        _l2_prefetch_kernel[(programs,)](*args, LANES_=LANES, EVICT_LAST=True, num_warps=1)
        return
    side = _side_stream(weight.device)
    side.wait_stream(torch.cuda.current_stream(weight.device))
    with torch.cuda.stream(side):
        _l2_prefetch_kernel[(programs,)](*args, LANES_=LANES, EVICT_LAST=_evict_last(), num_warps=1)
    _FORKED.add(side)


def join(device: torch.device) -> None:
    """The current stream waits for the prefetches launched since the last join (none: no-op)."""
    if device.type != "cuda" or not _FORKED:
        return
    main = torch.cuda.current_stream(device)
    for side in list(_FORKED):
        if side.device == main.device:
            main.wait_stream(side)
            _FORKED.discard(side)
