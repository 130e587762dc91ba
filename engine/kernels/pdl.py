"""Programmatic dependent launch (PDL, Hopper and later) for the Triton kernels of a decode step.

A kernel launched with PDL may start while the kernel before it is still finishing: its
programs issue the loads that no earlier kernel of the step writes (weights, their scales, norm
weights, the router's weight and bias), then wait at `wait_for_inputs` until the previous
kernel has completed and its writes are visible, and only then read activations or write
anything. Right after the wait each program lets the next kernel launch, so launch latency and
the ramp-up of one kernel hide behind the tail of the one before.

The contract every PDL kernel keeps (it makes the chain safe whatever comes next):
- every program reaches `wait_for_inputs` on every path (no early return before it);
- nothing is written before it, and nothing the kernel just before writes is read before it;
- the next kernel is let go only after the wait, so when kernel N+1 starts, kernel N-1 has
  completed and flushed: what a kernel two or more launches back wrote may be read before
  the wait (from L2, `.cg`), as the MoE down GEMV reads the router's expert ids.
Kernels launched without PDL (cuBLAS, torch ops) serialize as usual, before and after.
Captured into CUDA graphs the launches keep their programmatic edges.

`M2AGENT_PDL=0` turns it off (for A/B timing); it is also off without CUDA, below sm90 and
under Triton's interpreter (CPU tensors).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

ENV_VAR = "M2AGENT_PDL"


@functools.cache
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def enabled(device: torch.device) -> bool:
    """Whether the decode step's Triton kernels launch with PDL on `device`."""
    if device.type != "cuda":
        return False
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "off", "false", "no"):
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())


def launch_args(device: torch.device) -> dict[str, bool]:
    """The kernel's USE_PDL constexpr and Triton's launch option, set together."""
    on = enabled(device)
    return {"USE_PDL": on, "launch_pdl": on}


@triton.jit
def wait_for_inputs(USE_PDL: tl.constexpr):
    """Wait until the previous kernel's writes are visible, then let the next kernel launch."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
