"""Several programs of one kernel finishing one result: the last to arrive does the final step.

A decode batch is too small to fill the GPU one program per row, so a kernel cuts a row's work
over several programs; where a last step needs all of their results (a row's sum of squares,
the router's top-k, attention's chunk combine), the last program to arrive does it, reading the
others' results from L2, in a fixed order (deterministic). No program ever waits for another.
The counter is the caller's (int32, zero between launches; the last one resets it), so a
captured CUDA graph allocates nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def fence(ON_GPU: tl.constexpr):
    """Every thread's writes before it are visible GPU-wide to anyone ordered after it."""
    if ON_GPU:
        tl.inline_asm_elementwise(
            "fence.acq_rel.gpu; // $0", "=r", [], dtype=tl.int32, is_pure=False, pack=1
        )


@triton.jit
def last_to_arrive(arrivals_ptr, expected, ON_GPU: tl.constexpr):
    """Whether this program is the last of `expected` to call this on the counter (which the
    last one resets to zero). Every write this program made before is visible to the last
    one, and the last one sees every other program's (from L2: load those with `.cg`)."""
    fence(ON_GPU)
    tl.debug_barrier()  # all of this program's threads have written
    arrived = tl.atomic_add(arrivals_ptr, 1, sem="acq_rel", scope="gpu")
    last = arrived == expected - 1
    if last:
        tl.atomic_xchg(arrivals_ptr, 0, sem="relaxed", scope="gpu")
        fence(ON_GPU)
    return last
