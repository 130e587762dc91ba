"""One row of x times an FP8 weight with block scales, the weight staged in shared memory by
TMA (Hopper and later; Gluon): the batch-1 decode GEMV of q/k/v and o_proj.

`fp8_linear`'s Triton GEMV keeps one weight tile per program in flight through registers:
3 programs x 8 KB an SM, too few bytes to cover HBM latency (72% of the bound alone), and
it can start loading only its first tile before the kernel before it ends. Here each program
owns a weight slice of at most STAGES tiles of shared memory and asks for all of it by TMA
before its PDL wait (weights are written by no kernel of the step), so with one wave of
programs (at most two per SM) the whole weight streams into shared memory while the small
kernel before (add + RMSNorm, attention combine) still runs; after the wait the program
only reads it back. A slice longer than STAGES tiles refills each slot once it is read.

The scales fold into the activations (every tile lies in one scale row-block): the program's
scaled activations are computed once after the wait and kept in shared memory. Output: fp32
split-K pieces [SPLIT, 1, N] as `fp8_linear`'s (`PartialSums` for the consumer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import async_copy, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from m2agent.engine.kernels import pdl
from m2agent.engine.kernels.cache_policy import streamed_eviction
from m2agent.engine.kernels.occupancy import sm_count

BLOCK_N = 64  # weight rows per program (divides the checkpoint's 128-row scale blocks)
BLOCK_K = 256  # columns per TMA tile: 64 x 256 fp8 = 16 KB
STAGES = 6  # tiles of shared memory per program: 96 KB, two programs per SM
PROGRAMS_PER_SM = 2
NUM_WARPS = 8
COPY = "tma"  # or "cp.async": per-thread asynchronous copies (with an L2 eviction policy)


@dataclass(frozen=True, slots=True)
class TmaPlan:
    split: int
    k_per_split: int  # a multiple of BLOCK_K
    stages: int


def plan(n_dim: int, k_dim: int, block: tuple[int, int], device: torch.device) -> TmaPlan | None:
    """The launch for a one-row product, or None where this kernel does not apply (the
    caller then uses the Triton GEMV): the FP8 blocks must hold whole 64-row tiles and TMA
    needs 16-byte rows. Split-K: the most pieces that keep one wave of programs (two per
    SM), so every program is resident before the kernel before it ends."""
    if device.type != "cuda":
        return None
    if block[0] % BLOCK_N or k_dim % 16:
        return None
    tiles_n = triton.cdiv(n_dim, BLOCK_N)
    k_blocks = triton.cdiv(k_dim, BLOCK_K)
    slots = PROGRAMS_PER_SM * sm_count(device)
    split = 1
    while tiles_n * split * 2 <= slots and k_blocks >= split * 2:
        split *= 2
    k_per_split = triton.cdiv(k_blocks, split) * BLOCK_K
    return TmaPlan(triton.cdiv(k_dim, k_per_split), k_per_split, STAGES)


@gluon.jit
def _fp8_gemv_tma_kernel(
    x_ptr,  # [1, K]
    w_desc,  # TMA descriptor of the [N, K] fp8 weight, [BLOCK_N, BLOCK_K] boxes
    s_ptr,  # [ceil(N/BR), ceil(K/BC)] fp32
    out_ptr,  # [SPLIT, 1, N] fp32
    N,
    K,
    stride_sn,
    K_PER_SPLIT: gl.constexpr,
    K_P2: gl.constexpr,  # K_PER_SPLIT rounded up to a power of two
    BR: gl.constexpr,
    BC: gl.constexpr,
    BLOCK_N: gl.constexpr,
    BLOCK_K: gl.constexpr,
    STAGES: gl.constexpr,
    NUM_WARPS: gl.constexpr,
    USE_PDL: gl.constexpr,
):
    STEPS: gl.constexpr = K_PER_SPLIT // BLOCK_K
    pid_n = gl.program_id(0)
    split = gl.program_id(1)
    n0 = pid_n * BLOCK_N
    k0 = split * K_PER_SPLIT

    w_smem = gl.allocate_shared_memory(
        w_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], w_desc.layout
    )  # fmt: skip
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    for i in gl.static_range(STAGES):
        if i < STEPS:
            mbarrier.expect(bars.index(i), w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(
                w_desc, [n0, k0 + i * BLOCK_K], bars.index(i), w_smem.index(i)
            )  # fmt: skip

    # The scales of this slice (weights too: loaded before the wait), one per column.
    flat: gl.constexpr = gl.BlockedLayout([4], [32], [NUM_WARPS], [0])
    kf = gl.arange(0, K_P2, layout=flat)
    kk = k0 + kf
    k_ok = (kf < K_PER_SPLIT) & (kk < K)
    s = gl.load(s_ptr + (n0 // BR) * stride_sn + kk // BC, mask=k_ok, other=0.0)

    if USE_PDL:
        gl.inline_asm_elementwise(
            "griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
        )  # fmt: skip
        gl.inline_asm_elementwise(
            "griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False,
            pack=1,
        )  # fmt: skip

    a = gl.load(x_ptr + kk, mask=k_ok, other=0.0).to(gl.float32) * s
    a_smem = gl.allocate_shared_memory(
        gl.float32, [K_P2], gl.SwizzledSharedLayout(1, 1, 1, [0])
    )  # fmt: skip
    a_smem.store(a)
    gl.thread_barrier()

    tile: gl.constexpr = gl.BlockedLayout([1, 16], [2, 16], [NUM_WARPS, 1], [1, 0])
    acc = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, tile))
    for step in gl.static_range(STEPS):
        slot = step % STAGES
        mbarrier.wait(bars.index(slot), (step // STAGES) & 1)
        w = w_smem.index(slot).load(tile)
        a_step = a_smem.slice(step * BLOCK_K, BLOCK_K).load(gl.SliceLayout(0, tile))
        acc += gl.sum(w.to(gl.float32) * a_step[None, :], axis=1)
        if step + STAGES < STEPS:
            gl.thread_barrier()  # every warp has read the slot before TMA refills it
            mbarrier.expect(bars.index(slot), w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(
                w_desc, [n0, k0 + (step + STAGES) * BLOCK_K], bars.index(slot),
                w_smem.index(slot),
            )  # fmt: skip
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))

    n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, tile))
    gl.store(out_ptr + split * N + n, acc, mask=n < N)


@gluon.jit
def _fp8_gemv_cp_async_kernel(
    x_ptr,  # [1, K]
    w_ptr,  # [N, K] fp8
    s_ptr,  # [ceil(N/BR), ceil(K/BC)] fp32
    out_ptr,  # [SPLIT, 1, N] fp32
    N,
    K,
    stride_wn,
    stride_sn,
    K_PER_SPLIT: gl.constexpr,
    K_P2: gl.constexpr,
    BR: gl.constexpr,
    BC: gl.constexpr,
    BLOCK_N: gl.constexpr,
    BLOCK_K: gl.constexpr,
    STAGES: gl.constexpr,
    NUM_WARPS: gl.constexpr,
    EVICT: gl.constexpr,
    USE_PDL: gl.constexpr,
):
    """The same product, the slice copied by each thread's `cp.async` (one commit group per
    tile, so waiting for all but STAGES - 1 groups means the step's tile has landed)."""
    STEPS: gl.constexpr = K_PER_SPLIT // BLOCK_K
    pid_n = gl.program_id(0)
    split = gl.program_id(1)
    n0 = pid_n * BLOCK_N
    k0 = split * K_PER_SPLIT
    tile: gl.constexpr = gl.BlockedLayout([1, 16], [2, 16], [NUM_WARPS, 1], [1, 0])
    w_smem = gl.allocate_shared_memory(
        w_ptr.dtype.element_ty, [STAGES, BLOCK_N, BLOCK_K], gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    )  # fmt: skip
    rows = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, tile))
    cols = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, tile))
    row_ok = rows[:, None] < N
    base = w_ptr + rows[:, None].to(gl.int64) * stride_wn + cols[None, :]
    for i in gl.static_range(STAGES):
        if i < STEPS:
            kc = k0 + i * BLOCK_K
            async_copy.async_copy_global_to_shared(
                w_smem.index(i), base + kc, mask=row_ok & (kc + cols[None, :] < K),
                eviction_policy=EVICT,
            )  # fmt: skip
        async_copy.commit_group()

    flat: gl.constexpr = gl.BlockedLayout([4], [32], [NUM_WARPS], [0])
    kf = gl.arange(0, K_P2, layout=flat)
    kk = k0 + kf
    k_ok = (kf < K_PER_SPLIT) & (kk < K)
    s = gl.load(s_ptr + (n0 // BR) * stride_sn + kk // BC, mask=k_ok, other=0.0)
    if USE_PDL:
        gl.inline_asm_elementwise(
            "griddepcontrol.wait; // $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1
        )  # fmt: skip
        gl.inline_asm_elementwise(
            "griddepcontrol.launch_dependents; // $0", "=r", [], dtype=gl.int32, is_pure=False,
            pack=1,
        )  # fmt: skip
    a = gl.load(x_ptr + kk, mask=k_ok, other=0.0).to(gl.float32) * s
    a_smem = gl.allocate_shared_memory(
        gl.float32, [K_P2], gl.SwizzledSharedLayout(1, 1, 1, [0])
    )  # fmt: skip
    a_smem.store(a)

    acc = gl.zeros([BLOCK_N], gl.float32, gl.SliceLayout(1, tile))
    for step in gl.static_range(STEPS):
        async_copy.wait_group(STAGES - 1)
        gl.thread_barrier()  # every thread's copies of this tile have landed
        w = w_smem.index(step % STAGES).load(tile)
        a_step = a_smem.slice(step * BLOCK_K, BLOCK_K).load(gl.SliceLayout(0, tile))
        acc += gl.sum(w.to(gl.float32) * a_step[None, :], axis=1)
        if step + STAGES < STEPS:
            gl.thread_barrier()  # every warp has read the slot before it is refilled
            kc = k0 + (step + STAGES) * BLOCK_K
            async_copy.async_copy_global_to_shared(
                w_smem.index(step % STAGES), base + kc,
                mask=row_ok & (kc + cols[None, :] < K), eviction_policy=EVICT,
            )  # fmt: skip
        async_copy.commit_group()

    n = n0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, tile))
    gl.store(out_ptr + split * N + n, acc, mask=n < N)


def shared_layout() -> gl.NVMMASharedLayout:
    """Unswizzled rows of 256 bytes: each warp reads two whole rows, without bank conflicts."""
    return gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=8, rank=2)


def launch(
    x2: torch.Tensor,
    weight: torch.Tensor,
    scale_inv: torch.Tensor,
    block: tuple[int, int],
    p: TmaPlan,
) -> torch.Tensor:
    """x2 [1, K] @ weight [N, K]^T -> fp32 pieces [p.split, 1, N]."""
    n_dim, k_dim = weight.shape
    if weight.stride(1) != 1 or weight.data_ptr() % 16:
        raise ValueError("the TMA GEMV needs a row-major weight with 16-byte aligned rows")
    out = torch.empty((p.split, 1, n_dim), dtype=torch.float32, device=x2.device)
    grid = (triton.cdiv(n_dim, BLOCK_N), p.split)
    common = dict(
        K_PER_SPLIT=p.k_per_split, K_P2=triton.next_power_of_2(p.k_per_split), BR=block[0],
        BC=block[1], BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, STAGES=p.stages, NUM_WARPS=NUM_WARPS,
        num_warps=NUM_WARPS, **pdl.launch_args(x2.device),
    )  # fmt: skip
    if COPY == "cp.async":
        _fp8_gemv_cp_async_kernel[grid](
            x2, weight, scale_inv, out, n_dim, k_dim, weight.stride(0), scale_inv.stride(0),
            EVICT=streamed_eviction("dense", x2.device), **common,
        )  # fmt: skip
        return out
    desc = TensorDescriptor(
        weight, [n_dim, k_dim], [weight.stride(0), 1], [BLOCK_N, BLOCK_K], shared_layout()
    )  # fmt: skip
    _fp8_gemv_tma_kernel[grid](
        x2, desc, scale_inv, out, n_dim, k_dim, scale_inv.stride(0), **common
    )  # fmt: skip
    return out
