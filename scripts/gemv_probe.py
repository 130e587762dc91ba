"""Probe: the one-row FP8 GEMV variants alone (no kernel before them), on a GPU.

Each variant runs M2's q/k/v (8192 x 3072) and o_proj (3072 x 6144) products over 8 weight
copies in turn (200+ MB: no L2 hits), 8 launches captured in one CUDA graph; prints the GPU
time per launch (median of 7 rounds of 20 replays, and the range) and the share of the
measured copy bandwidth. With PDL on, each launch overlaps the one before it.

    python3 -P scripts/gemv_probe.py
"""

from __future__ import annotations

import functools
import os
import statistics

import torch
import triton
import triton.language as tl

from m2agent.engine.kernels import fp8_gemv_tma, pdl, reference
from m2agent.engine.kernels.fp8_linear import LinearTiles, fp8_linear_parts, plan
from m2agent.engine.kernels.partial_sums import PartialSums
from m2agent.engine.kernels.pdl import wait_for_inputs

BLOCK = (128, 128)
TRITON = LinearTiles(1, 32, 256, 4, 2, 3, gemv=True)
TMA = LinearTiles(1, 32, 256, 4, 2, 3, gemv=True, tma=True)
VARIANTS = [
    ("triton-gemv", TRITON, {}),
    ("tiled-gemv", TRITON, {}),
    ("tma-s3", TMA, {"COPY": "tma", "STAGES": 3}),
]


def copy_bandwidth() -> float:
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    start, end = torch.cuda.Event(True), torch.cuda.Event(True)
    start.record()
    for _ in range(10):
        b.copy_(a)
    end.record()
    torch.cuda.synchronize()
    return 2 * 10 * a.numel() / (start.elapsed_time(end) * 1e-3)


def time_graph(fn, launches: int) -> tuple[float, float, float]:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(20):
        graph.replay()
    rounds = []
    for _ in range(7):
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        for _ in range(20):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        rounds.append(start.elapsed_time(end) * 1e3 / 20 / launches)
    return statistics.median(rounds), min(rounds), max(rounds)


@triton.jit
def _tiled_gemv_kernel(
    x_ptr, w_ptr, s_ptr, out_ptr, N: tl.constexpr, K: tl.constexpr, stride_sn,
    K_PER_SPLIT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr,
):  # fmt: skip
    """The Triton GEMV reading a tile-major weight [N/BN, K/BK, BN, BK]: each step's tile is
    one contiguous block of BN x BK bytes (instead of BN rows of BK bytes, K bytes apart)."""
    pid_n = tl.program_id(1)
    split = tl.program_id(2)
    r = tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_K)
    KT: tl.constexpr = K // BLOCK_K
    scale_row = (pid_n * BLOCK_N) // BR
    tile0 = pid_n * KT + (split * K_PER_SPLIT) // BLOCK_K
    off = r[:, None] * BLOCK_K + c[None, :]
    w = tl.load(w_ptr + tile0.to(tl.int64) * BLOCK_N * BLOCK_K + off, eviction_policy="evict_first")
    kk = split * K_PER_SPLIT + c
    s = tl.load(s_ptr + scale_row * stride_sn + kk // BC)
    wait_for_inputs(USE_PDL)
    a = tl.load(x_ptr + kk).to(tl.float32) * s
    acc = tl.sum(w.to(tl.float32) * a[None, :], 1)
    for step in range(BLOCK_K, K_PER_SPLIT, BLOCK_K):
        t = tile0 + step // BLOCK_K
        w = tl.load(w_ptr + t.to(tl.int64) * BLOCK_N * BLOCK_K + off, eviction_policy="evict_first")
        kk = split * K_PER_SPLIT + step + c
        s = tl.load(s_ptr + scale_row * stride_sn + kk // BC)
        a = tl.load(x_ptr + kk).to(tl.float32) * s
        acc += tl.sum(w.to(tl.float32) * a[None, :], 1)
    tl.store(out_ptr + split * N + pid_n * BLOCK_N + r, acc)


def tiled(weight: torch.Tensor, bn: int = 32, bk: int = 256) -> torch.Tensor:
    n, k = weight.shape
    return weight.view(n // bn, bn, k // bk, bk).permute(0, 2, 1, 3).contiguous()


def tiled_launches(x: torch.Tensor, weights: list, tiles: LinearTiles) -> list:
    outs = []
    for w, s in weights:
        n, k = w.shape[0] * w.shape[2], w.shape[1] * w.shape[3]
        p = plan(1, n, k, BLOCK, x.device, tiles)
        out = torch.empty((p.split, 1, n), dtype=torch.float32, device=x.device)
        _tiled_gemv_kernel[(1, n // 32, p.split)](
            x, w, s, out, n, k, s.stride(0), K_PER_SPLIT=p.k_per_split, BR=128, BC=128,
            BLOCK_N=32, BLOCK_K=256, num_warps=4, **pdl.launch_args(x.device),
        )  # fmt: skip
        outs.append(PartialSums(out.unsqueeze(2), x.dtype))
    return outs


def launches(x: torch.Tensor, weights: list, tiles: LinearTiles) -> list:
    """One product per weight copy, left as split-K pieces (no summing launch between)."""
    return [fp8_linear_parts(x, w, s, BLOCK, tiles) for w, s in weights]


def main() -> None:
    bw = copy_bandwidth()
    print(
        f"{torch.cuda.get_device_name()}: copy bandwidth {bw / 1e9:,.0f} GB/s; PDL "
        f"{os.environ.get('M2AGENT_PDL', '1')}"
    )
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n, k in ((8192, 3072), (3072, 6144)):
        weights = [
            reference.quantize_fp8_block(torch.randn(n, k, generator=gen, device="cuda"), BLOCK)
            for _ in range(8)
        ]
        tiled_weights = [(tiled(w), s) for w, s in weights]
        x = torch.randn(1, k, generator=gen, device="cuda").bfloat16()
        bound_us = n * k / bw * 1e6
        first = None
        for name, tiles, patch in VARIANTS:
            saved = {key: getattr(fp8_gemv_tma, key) for key in patch}
            for key, value in patch.items():
                setattr(fp8_gemv_tma, key, value)
            try:
                if name == "tiled-gemv":
                    run = functools.partial(tiled_launches, x, tiled_weights, tiles)
                else:
                    run = functools.partial(launches, x, weights, tiles)
                got = run()[0].materialize()
                first = got if first is None else first
                med, lo, hi = time_graph(run, len(weights))
                diff = (got.float() - first.float()).abs().max().item()
                print(
                    f"  {n}x{k} {name:12s} {med:6.2f} us ({lo:.2f}-{hi:.2f}) = "
                    f"{100 * bound_us / med:5.1f}% of {bound_us:.2f} us; max diff {diff:.3g}"
                )
            finally:
                for key, value in saved.items():
                    setattr(fp8_gemv_tma, key, value)
        del weights, tiled_weights


if __name__ == "__main__":
    main()
