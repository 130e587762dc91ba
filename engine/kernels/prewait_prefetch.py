"""A GEMV's own weight slice brought into L2 while it waits for its input (PDL, sm_90+).

Under programmatic dependent launch (`pdl`) a decode step's GEMV starts while the kernel before
it still runs: its programs load their first weight tile into registers, then wait for the
activations. The rest of their slice (two of the three steps of M2's q/k/v and o_proj slices)
used to leave HBM only after the wait. Here each program also asks, before the wait, for the rest
of its slice to be brought into L2 (`cp.async.bulk.prefetch.L2`: asynchronous, no registers, a
request per row share), so the HBM reads overlap the kernel before and the loop after the
wait reads from L2. The weights are the only thing fetched early: nothing a kernel of the step
writes, so the PDL contract holds. The kernel still reads every byte itself; the prefetch only
moves when they leave HBM.

`M2AGENT_PREWAIT_PREFETCH` = "0" turns it off, or names the kinds that keep it ("dense,moe";
A/B timing; `cache_policy.prewait_prefetch`). Off on CPU (Triton's interpreter has no inline
assembly) and before sm_90.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels.cache_policy import prewait_prefetch

ALIGN = 16  # bytes: the bulk prefetch's address and size granule


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def usable(kind: str, weight: torch.Tensor, row_stride_elements: int, step_elements: int) -> bool:
    """Whether a GEMV of `kind` reading `weight` prefetches: switched on
    (`cache_policy.prewait_prefetch`), sm_90+, and the weight's rows and steps aligned as the
    bulk prefetch needs."""
    size, device = weight.element_size(), weight.device
    return (
        prewait_prefetch(kind, device)
        and _capable(device.index if device.index is not None else torch.cuda.current_device())
        and weight.data_ptr() % ALIGN == 0
        and (row_stride_elements * size) % ALIGN == 0
        and (step_elements * size) % ALIGN == 0
    )


def lanes(block_n: int, num_warps: int) -> int:
    """Prefetch requests per weight row: one per thread over the program's rows."""
    return max(1, triton.next_power_of_2(max(1, 32 * num_warps // block_n)))


@triton.jit
def _bulk_prefetch_l2(addr, size):
    """Each element: bring `size` bytes (a multiple of 16; 0: nothing) at `addr` into L2."""
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
def prefetch_rows(
    row_ptrs,  # [ROWS] pointers: the first element of each row's range
    row_ok,  # [ROWS]
    count,  # elements of each row's range (may be <= 0: nothing)
    BYTES: tl.constexpr,  # bytes per element
    LANES: tl.constexpr,  # requests per row
):
    """Bring `count` elements from each of `row_ptrs` into L2, in LANES shares a row, each a
    multiple of ALIGN bytes (the tail under ALIGN is left to the normal load)."""
    lane = tl.arange(0, LANES)
    nbytes = tl.maximum(count, 0) * BYTES
    share = ((nbytes + LANES - 1) // LANES + 15) // 16 * 16
    start = lane * share
    size = tl.minimum(tl.maximum(nbytes - start, 0), share) // 16 * 16
    size = tl.where(row_ok[:, None], size[None, :], 0)
    addr = row_ptrs.to(tl.int64)[:, None] + start[None, :]
    _bulk_prefetch_l2(addr, size.to(tl.int32))
