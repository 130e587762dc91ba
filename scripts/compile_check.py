"""Compile every Triton kernel of the engine for an NVIDIA GPU on a machine without one.

Triton's front end, its passes and its bundled ptxas need no GPU, so this catches before any
device time is spent what Triton's CPU interpreter cannot: front-end type errors (a loop
variable re-typed in a branch, a constexpr misuse), failures of the GPU passes, and register
spills. Each kernel entry point is called along each of its paths (GEMV and MMA, split and
not, one-launch router and top-k kernel, sliced norm, split-KV attention and its combine, ...)
on small CPU tensors with the launches intercepted: nothing runs, every distinct launch
(kernel, argument types, constexprs, warps, stages) is recorded and then compiled as a CUDA
machine would build it (`ON_GPU` true; with and without programmatic dependent launch where the
kernel has it; ptxas as Triton runs it). Prints registers and spilled bytes per variant; exits 1
on a compile error (and, with --no-spills, on a spill).

    python3 scripts/compile_check.py [--arch 90] [--only router] [--no-spills]

Needs `triton` installed (`pip install triton==3.6.0`; CPU-only machines can install it).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

LAUNCH_OPTIONS = {"num_warps", "num_stages", "num_ctas", "launch_pdl", "maxnreg", "grid"}
DTYPES = {
    torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8",
    torch.uint8: "u8", torch.bool: "i1", torch.float8_e4m3fn: "fp8e4nv",
}  # fmt: skip


@dataclass(frozen=True)
class Launch:
    kernel: JITFunction
    signature: tuple[tuple[str, str], ...]  # (parameter, Triton type or "constexpr")
    constexprs: tuple[tuple[str, Any], ...]
    num_warps: int
    num_stages: int

    def as_built(self, pdl: bool) -> tuple[tuple[str, Any], ...]:
        """The constexprs a CUDA launch passes: `ON_GPU` true, `USE_PDL` as asked, the
        decode attention's `PREFETCH` (default: with PDL) with it, and the router's bitonic
        top-k (`SORT`, `fused_small_ops.ROUTER_SORT` on CUDA) (the CPU call passed false for
        all)."""
        built = {"ON_GPU": True, "USE_PDL": pdl, "PREFETCH": pdl, "SORT": True}
        return tuple((k, built.get(k, v)) for k, v in self.constexprs)

    def name(self, pdl: bool) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.as_built(pdl) if k.isupper())
        return f"{self.kernel.fn.__name__}({shown}) warps={self.num_warps} stages={self.num_stages}"


RECORDED: dict[Launch, None] = {}


def _type_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "*" + DTYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type a kernel argument of {type(value).__name__}")


def _record(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
    """Stands in for JITFunction.run: note the launch, run nothing."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in LAUNCH_OPTIONS}
    bound = inspect.signature(self.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    signature, constexprs = [], []
    for param in self.params:
        value = bound.arguments[param.name]
        if param.is_constexpr or value is None:
            signature.append((param.name, "constexpr"))
            constexprs.append((param.name, value))
        else:
            signature.append((param.name, _type_of(value)))
    launch = Launch(
        self,
        tuple(signature),
        tuple(constexprs),
        options.get("num_warps", 4),
        options.get("num_stages", 3),
    )
    RECORDED.setdefault(launch)


def _compile(launch: Launch, arch: int, pdl: bool) -> tuple[str, int, int]:
    """(name, registers, spill bytes) of the launch built for sm_{arch}."""
    index = {p.name: i for i, p in enumerate(launch.kernel.params)}
    constexprs = {(index[name],): value for name, value in launch.as_built(pdl)}
    source = ASTSource(fn=launch.kernel, signature=dict(launch.signature), constexprs=constexprs)
    target = GPUTarget("cuda", arch, 32)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    compiled = triton.compile(source, target=target, options=options)
    ptxas = Path(triton.__file__).parent / "backends/nvidia/bin/ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
        info = subprocess.run(
            [str(ptxas), "-v", "--gpu-name", gpu, ptx.name, "-o", os.devnull],
            capture_output=True, text=True, check=True,
        ).stderr  # fmt: skip
    registers = int(re.search(r"Used (\d+) registers", info).group(1))  # type: ignore[union-attr]
    spills = sum(int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info))
    return launch.name(pdl), registers, spills


# -- the paths: each calls entry points on CPU tensors (values are never read) ------------------


def _fp8(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    weight = torch.randn(rows, cols).to(torch.float8_e4m3fn)
    return weight, torch.rand(-(-rows // 128), -(-cols // 128)) + 0.5


def linear_paths() -> None:
    from m2agent.engine.kernels import fp8_linear
    from m2agent.engine.kernels.partial_sums import PendingNorm

    for n, k in ((8192, 3072), (3072, 6144)):  # M2's q/k/v and o_proj
        weight, scale = _fp8(n, k)
        for rows in (1, 4, 16, 64, 65, 600):
            x = torch.randn(rows, k, dtype=torch.bfloat16)
            fp8_linear.fp8_linear(x, weight, scale, (128, 128))
            fp8_linear.fp8_linear_parts(x, weight, scale, (128, 128))
        pending = PendingNorm(
            torch.randn(1, k, dtype=torch.bfloat16), torch.rand(1, k // 256),
            torch.randn(k, dtype=torch.bfloat16), 1e-6,
        )  # fmt: skip
        fp8_linear.fp8_linear_parts(pending, weight, scale, (128, 128))


def moe_paths() -> None:
    from m2agent.engine.kernels import fp8_moe
    from m2agent.engine.kernels.reference import ExpertWeights

    experts, hidden, inter, top_k = 16, 3072, 1536, 8
    w13, s13 = _fp8(experts * 2 * inter, hidden)
    w2, s2 = _fp8(experts * hidden, inter)
    weights = ExpertWeights(
        w13.view(experts, 2 * inter, hidden), w2.view(experts, hidden, inter),
        s13.view(experts, -1, s13.shape[1]), s2.view(experts, -1, s2.shape[1]), (128, 128),
    )  # fmt: skip
    per_pair = fp8_moe.TileConfig.uniform(False, 16, 64, 128, 4, 3)
    for tokens in (1, 4, 16, 64, 256, 1024):
        x = torch.randn(tokens, hidden, dtype=torch.bfloat16)
        ids = torch.randint(0, experts, (tokens, top_k))
        routing = torch.rand(tokens, top_k)
        fp8_moe.moe_experts_parts(x, routing, ids, weights)
        fp8_moe.moe_experts_parts(x, routing, ids, weights, expert_map=torch.arange(experts))
        if tokens <= 16:
            fp8_moe.moe_experts_parts(x, routing, ids, weights, tiles=per_pair)


def bf16_moe_paths() -> None:
    from m2agent.engine.kernels import moe_triton

    experts, hidden, inter, top_k = 8, 3072, 1536, 8
    w13 = torch.randn(experts, 2 * inter, hidden, dtype=torch.bfloat16)
    w2 = torch.randn(experts, hidden, inter, dtype=torch.bfloat16)
    for tokens in (1, 16):
        x = torch.randn(tokens, hidden, dtype=torch.bfloat16)
        ids = torch.randint(0, experts, (tokens, top_k))
        moe_triton.moe_experts_small_batch(x, torch.rand(tokens, top_k), ids, w13, w2)


def router_paths() -> None:
    from m2agent.engine.kernels.fused_small_ops import route, route_normed, routes_pending_norm
    from m2agent.engine.kernels.partial_sums import PendingNorm

    for hidden in (3072, 7168):
        gate, bias = torch.randn(256, hidden), torch.randn(256)
        for tokens in (1, 2, 3, 16, 17):
            route(torch.randn(tokens, hidden, dtype=torch.bfloat16), gate, bias, 8)
        if routes_pending_norm(hidden):
            row, weight = torch.randn(1, hidden, dtype=torch.bfloat16), torch.randn(hidden)
            pending = PendingNorm(row, torch.rand(1, hidden // 256), weight.bfloat16(), 1e-6)
            route_normed(pending, gate, bias, 8)
    for experts, top_k in ((16, 1), (2, 2), (7, 3)):  # small top-k: the bitonic edge cases
        gate, bias = torch.randn(experts, 256), torch.randn(experts)
        for tokens in (1, 17):
            route(torch.randn(tokens, 256, dtype=torch.bfloat16), gate, bias, top_k)


def norm_paths() -> None:
    from m2agent.engine.kernels.fused_small_ops import add_rms_norm
    from m2agent.engine.kernels.partial_sums import PartialSums

    weight = torch.randn(3072, dtype=torch.bfloat16)
    for rows in (1, 8, 9, 300):
        x = torch.randn(rows, 3072, dtype=torch.bfloat16)
        pieces = PartialSums(torch.randn(4, rows, 8, 3072), torch.bfloat16)
        for delta in (None, torch.randn(rows, 3072, dtype=torch.bfloat16), pieces):
            add_rms_norm(x, delta, weight, 1e-6)
            add_rms_norm(x, delta, weight, 1e-6, torch.zeros(8, dtype=torch.int32))
            add_rms_norm(x, delta, weight, 1e-6, torch.zeros(8, dtype=torch.int32), defer=True)


def qk_norm_paths() -> None:
    from m2agent.engine.kernels import reference
    from m2agent.engine.kernels.fused_small_ops import qk_norm_rope_store
    from m2agent.engine.kernels.partial_sums import PartialSums

    heads, kv_heads, head_dim = 48, 8, 128
    for tokens in (1, 4, 64):
        qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, dtype=torch.bfloat16)
        q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], 1)
        pieces = PartialSums(torch.randn(4, tokens, 1, qkv.shape[1]), torch.bfloat16)
        cos, sin = reference.rope_cos_sin(torch.arange(tokens), 64, 5e6, torch.bfloat16)
        caches = [torch.randn(8, 16, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2)]
        norms = torch.randn(heads * head_dim), torch.randn(kv_heads * head_dim)
        q_w, k_w = (n.to(torch.bfloat16) for n in norms)
        slots = torch.arange(tokens)
        qk_norm_rope_store(q, k, v, q_w, k_w, cos, sin, *caches, slots, 1e-6, head_dim)
        q, k, v = (pieces.columns(a, w) for a, w in ((0, 6144), (6144, 1024), (7168, 1024)))
        qk_norm_rope_store(q, k, v, q_w, k_w, cos, sin, *caches, slots, 1e-6, head_dim)


def attention_paths() -> None:
    from m2agent.engine.kernels.paged_attention_triton import paged_decode_attention
    from m2agent.engine.kernels.prefill_attention_triton import paged_prefill_attention

    heads, kv_heads, head_dim = 48, 8, 128
    caches = [torch.randn(64, 16, kv_heads, head_dim, dtype=torch.bfloat16) for _ in range(2)]
    for seqs in (1, 8, 64):
        q = torch.randn(seqs, heads, head_dim, dtype=torch.bfloat16)
        tables = torch.zeros(seqs, 4, dtype=torch.int32)
        lens = torch.full((seqs,), 50, dtype=torch.int32)
        paged_decode_attention(q, *caches, tables, lens, head_dim**-0.5)
        paged_decode_attention(q, *caches, tables, lens, head_dim**-0.5, splits=1)
        starts = torch.arange(seqs + 1, dtype=torch.int32) * 50
        q = torch.randn(seqs * 50, heads, head_dim, dtype=torch.bfloat16)
        paged_prefill_attention(q, *caches, tables, lens, starts, 50, head_dim**-0.5)


PATHS: dict[str, Callable[[], None]] = {
    "linear": linear_paths, "moe": moe_paths, "bf16-moe": bf16_moe_paths,
    "router": router_paths, "norm": norm_paths, "qk-norm": qk_norm_paths,
    "attention": attention_paths,
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="SM version (90: H100/H200)")
    parser.add_argument("--only", choices=sorted(PATHS), action="append", help="these paths")
    parser.add_argument("--no-spills", action="store_true", help="a spill fails the check too")
    args = parser.parse_args()
    original = JITFunction.run
    JITFunction.run = _record  # type: ignore[method-assign]
    try:
        for name in args.only or PATHS:
            PATHS[name]()
    finally:
        JITFunction.run = original  # type: ignore[method-assign]
    started, failed, spilled = time.perf_counter(), 0, 0
    print(f"{len(RECORDED)} launches recorded; building for sm_{args.arch}")
    for launch in RECORDED:
        has_pdl = any(name == "USE_PDL" for name, _ in launch.constexprs)
        for pdl in (True, False) if has_pdl else (False,):
            try:
                name, registers, spills = _compile(launch, args.arch, pdl)
            except Exception as error:  # a front-end or backend error: show it, go on
                failed += 1
                cause = f"\n{error.__cause__!r}" if error.__cause__ else ""
                print(f"FAILED {launch.name(pdl)}:\n{error}{cause}", file=sys.stderr)
                continue
            spilled += spills > 0
            print(f"{registers:4d} regs {spills:6d} B spilled  {name}")
    took = time.perf_counter() - started
    print(f"{failed} failed, {spilled} spilling, built in {took:.0f} s")
    return 1 if failed or (spilled and args.no_spills) else 0


if __name__ == "__main__":
    sys.exit(main())
