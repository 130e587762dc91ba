"""`m2agent bench kernels`: the decode step's heavy kernels alone, at M2's shapes, against what
the memory and the matrix units allow.

- MoE layer (E=256, top-8, hidden 3072, intermediate 1536) for 1..1024 tokens: FP8 kernels
  (and the bf16 path for comparison); the bound is the bytes of the experts actually touched
  over the measured copy bandwidth, and, at many tokens, the FLOPs over the measured bf16
  matmul rate.
- FP8 dense linears (fused q/k/v width, o_proj) at decode batch sizes, against their bytes.
- Split-KV decode attention at long contexts, against the KV bytes.

Each kernel is captured in a CUDA graph that cycles through several random input sets (so
launch overhead and a warm L2 do not flatter it); the median of the timed replays is reported
with the spread.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial

import torch

from m2agent.engine.bench.common import Report
from m2agent.engine.bench.roofline import measure_copy_bandwidth
from m2agent.engine.kernels import reference
from m2agent.engine.kernels.reference import ExpertWeights

E, TOP_K, HIDDEN, INTER = 256, 8, 3072, 1536
BLOCK = (128, 128)


@dataclass(frozen=True, slots=True)
class KernelRow:
    kernel: str
    tokens: int
    time_us: float  # median of the timed replays
    spread_us: tuple[float, float]
    bytes_touched: int
    bound_us: float  # bytes over copy bandwidth (or FLOPs over the matmul rate, if larger)
    flops: int

    @property
    def of_bound(self) -> float:
        return self.bound_us / self.time_us


@dataclass(frozen=True, slots=True)
class KernelsReport:
    device: str
    copy_bandwidth_gb_s: float
    matmul_tflop_s: float
    rows: list[KernelRow] = field(default_factory=list)

    def to_json(self) -> str:
        rows = [{**asdict(r), "of_bound": round(r.of_bound, 3)} for r in self.rows]
        return json.dumps({**asdict(self), "rows": rows}, indent=2)

    def table(self) -> str:
        lines = [
            f"device: {self.device}; copy {self.copy_bandwidth_gb_s:.0f} GB/s, "
            f"bf16 matmul {self.matmul_tflop_s:.0f} TFLOP/s",
            f"{'kernel':34} {'tokens':>7} {'us':>9} {'spread':>15} {'bound us':>9} "
            f"{'of bound':>9} {'TFLOP/s':>8}",
        ]
        for r in self.rows:
            spread = f"{r.spread_us[0]:.1f}-{r.spread_us[1]:.1f}"
            rate = r.flops / r.time_us / 1e6
            lines.append(
                f"{r.kernel:34} {r.tokens:>7} {r.time_us:9.1f} {spread:>15} {r.bound_us:9.1f} "
                f"{r.of_bound:9.0%} {rate:8.1f}"
            )
        return "\n".join(lines)


def time_graph(calls: Sequence[Callable[[], object]], replays: int = 20) -> list[float]:
    """Microseconds per call of each replay of a graph that makes all `calls` in turn."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:  # compile and pick kernels outside the capture
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / len(calls))
    graph.reset()
    return times


def measure_matmul_rate(device: torch.device, size: int = 8192) -> float:
    """FLOP/s of a large bf16 matrix product on random data."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    times = time_graph([partial(torch.matmul, a, b)] * 3, replays=5)
    return 2 * size**3 / (statistics.median(times) * 1e-6)


def random_experts(device: torch.device, fp8: bool, seed: int) -> ExpertWeights:
    generator = torch.Generator(device=device).manual_seed(seed)
    shapes = {"w13": (E, 2 * INTER, HIDDEN), "w2": (E, HIDDEN, INTER)}
    if not fp8:
        return ExpertWeights(
            *(
                (torch.randn(s, generator=generator, device=device) * 0.02).bfloat16()
                for s in shapes.values()
            )
        )
    parts: dict[str, torch.Tensor] = {}
    for name, shape in shapes.items():
        weight = torch.empty(shape, dtype=reference.FP8_DTYPE, device=device)
        scale = torch.empty((E, shape[1] // 128, shape[2] // 128), device=device)
        for e in range(E):
            dense = torch.randn(shape[1:], generator=generator, device=device) * 0.02
            weight[e], scale[e] = reference.quantize_fp8_block(dense, BLOCK)
        parts[name], parts[f"{name}_scale"] = weight, scale
    return ExpertWeights(parts["w13"], parts["w2"], parts["w13_scale"], parts["w2_scale"], BLOCK)


def _moe_inputs(
    tokens: int, sets: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator(device=device).manual_seed(tokens)
    # Router logits of order one, as a trained router's (and the dummy models') are: with unit
    # weights they reach +-150, the sigmoid saturates at 1.0 for a third of the experts, and the
    # tie-broken top-k sends most tokens to a few dozen experts (45 of 256 at 1024 tokens, each
    # ~180 tokens: a compute-bound case real routing never makes; it touches all 256).
    gate = torch.randn(E, HIDDEN, generator=generator, device=device) * 0.02
    bias = torch.zeros(E, device=device)
    out = []
    for _ in range(sets):
        x = torch.randn(tokens, HIDDEN, generator=generator, device=device).bfloat16()
        weights, ids = reference.route(x, gate, bias, TOP_K)
        out.append((x, weights, ids))
    return out


def _bound(bytes_: int, flops: int, bandwidth: float, rate: float) -> float:
    return max(bytes_ / bandwidth, flops / rate) * 1e6


def bench_moe(
    device: torch.device,
    token_counts: list[int],
    bandwidth: float,
    rate: float,
    report: Report,
    bf16: bool,
) -> list[KernelRow]:
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    from m2agent.engine.kernels import dispatch, fp8_moe

    rows = []
    for fp8 in (True, False) if bf16 else (True,):
        experts = random_experts(device, fp8, seed=1)
        weight_bytes = 1 if fp8 else 2
        per_expert = 3 * HIDDEN * INTER * weight_bytes + (3 * 12 * 24 * 4 if fp8 else 0)
        for tokens in token_counts:
            sets = max(2, min(8, 64 // tokens))
            inputs = _moe_inputs(tokens, sets, device)
            touched = statistics.mean(len(torch.unique(ids)) for _, _, ids in inputs)
            bytes_ = int(touched * per_expert + tokens * HIDDEN * 2 * 2)
            flops = 2 * tokens * TOP_K * 3 * HIDDEN * INTER
            variants: list[tuple[str, fp8_moe.TileConfig | None]] = [("default", None)]
            if fp8:
                variants += [(_tile_name(t), t) for t in _sweep(tokens)]
            for label, tiles in variants:
                # The kernels alone: their split-K pieces are summed by the next fused
                # residual add + RMSNorm in the model, as part of a launch it makes anyway.
                if fp8 and tiles is not None:
                    calls = [
                        partial(fp8_moe.moe_experts_parts, *a, experts, tiles=tiles) for a in inputs
                    ]
                else:
                    calls = [partial(dispatch.moe_experts_parts, *a, experts) for a in inputs]
                try:
                    times = time_graph(calls)
                except (OutOfResources, CompilationError) as e:  # a tile the compiler rejects
                    report(f"  moe {label} at {tokens} tokens failed: {e}")
                    continue
                name = f"moe {'fp8' if fp8 else 'bf16'} {label}"
                row = KernelRow(
                    name, tokens, statistics.median(times), (min(times), max(times)),
                    bytes_, _bound(bytes_, flops, bandwidth, rate), flops,
                )  # fmt: skip
                report(f"  {name} x{tokens}: {row.time_us:.1f} us ({row.of_bound:.0%} of bound)")
                rows.append(row)
        del experts
        torch.cuda.empty_cache()
    return rows


def _tile_name(t: object) -> str:
    from m2agent.engine.kernels.fp8_moe import TileConfig

    assert isinstance(t, TileConfig)
    kind = "grouped" if t.grouped else "pair-gemv" if t.gemv else "pair"
    g, d = t.gate_up, t.down
    return (
        f"{kind} m{t.block_m} gu n{g.block_n} k{g.block_k} w{g.num_warps} s{g.num_stages}"
        f" dn n{d.block_n} k{d.block_k} w{d.num_warps} s{d.num_stages}"
    )


def _sweep(tokens: int) -> list[object]:
    """A few tile configs around the table's choice, to keep the table honest (the full sweep
    that made the table is scripts/tune_kernels.py)."""
    from m2agent.engine.kernels.fp8_moe import KernelTiles, TileConfig

    configs = []
    if tokens <= 16:  # per-pair GEMV (plain FMAs) beside the per-pair MMA
        configs.append(
            TileConfig(False, 16, KernelTiles(32, 256, 4, 2), KernelTiles(64, 256, 4, 2), gemv=True)
        )
    if tokens <= 16:
        configs += [TileConfig.uniform(False, 16, n, 128, w, 3) for n in (64, 128) for w in (4, 8)]
    if tokens > 1:
        configs += [TileConfig.uniform(True, 16, n, 128, 4, 3) for n in (64, 128)]
    if tokens > 16:
        configs += [TileConfig.uniform(True, m, 128, 128, w, 3) for m in (32, 64) for w in (4, 8)]
    return configs


def bench_linear(
    device: torch.device, token_counts: list[int], bandwidth: float, report: Report
) -> list[KernelRow]:
    from m2agent.engine.kernels import fp8_linear

    rows = []
    shapes = {"qkv (3072->8192)": (8192, 3072), "o_proj (6144->3072)": (3072, 6144)}
    generator = torch.Generator(device=device).manual_seed(2)
    for name, (n, k) in shapes.items():
        weights = []
        for _ in range(4):
            dense = torch.randn(n, k, generator=generator, device=device) * 0.02
            weights.append(reference.quantize_fp8_block(dense, BLOCK))
        for tokens in token_counts:
            xs = [torch.randn(tokens, k, device=device).bfloat16() for _ in weights]
            times = time_graph(
                [
                    partial(fp8_linear.fp8_linear_parts, x, w, s, BLOCK)
                    for x, (w, s) in zip(xs, weights, strict=True)
                ]
            )
            bytes_ = n * k + tokens * (n + k) * 2
            flops = 2 * tokens * n * k
            row = KernelRow(
                f"fp8 linear {name}", tokens, statistics.median(times),
                (min(times), max(times)), bytes_, bytes_ / bandwidth * 1e6, flops,
            )  # fmt: skip
            report(f"  {row.kernel} x{tokens}: {row.time_us:.1f} us ({row.of_bound:.0%})")
            rows.append(row)
    return rows


def bench_attention(
    device: torch.device, contexts: list[int], bandwidth: float, report: Report
) -> list[KernelRow]:
    from m2agent.engine.kernels import paged_attention_triton as attention

    rows = []
    heads, kv_heads, head_dim, page = 48, 8, 128, 16
    for context in contexts:
        blocks = -(-context // page)
        caches = [
            (
                torch.randn(blocks, page, kv_heads, head_dim, device=device).bfloat16(),
                torch.randn(blocks, page, kv_heads, head_dim, device=device).bfloat16(),
            )
            for _ in range(2)
        ]
        table = torch.randperm(blocks, device=device, dtype=torch.int32)[None]
        lens = torch.tensor([context], dtype=torch.int32, device=device)
        q = torch.randn(1, heads, head_dim, device=device).bfloat16()
        scale = head_dim**-0.5
        for splits in (1, None):
            decode = partial(attention.paged_decode_attention, q, splits=splits)
            times = time_graph([partial(decode, k, v, table, lens, scale) for k, v in caches])
            bytes_ = 2 * context * kv_heads * head_dim * 2
            chosen = splits or attention.choose_splits(1, kv_heads, device)
            row = KernelRow(
                f"decode attention, {chosen} splits", context, statistics.median(times),
                (min(times), max(times)), bytes_, bytes_ / bandwidth * 1e6,
                4 * context * heads * head_dim,
            )  # fmt: skip
            report(f"  {row.kernel} at {context}: {row.time_us:.1f} us ({row.of_bound:.0%})")
            rows.append(row)
        del caches
    return rows


def run_kernels_bench(
    *,
    token_counts: list[int],
    contexts: list[int],
    bf16: bool,
    report: Report = print,
) -> KernelsReport:
    if not torch.cuda.is_available():
        from m2agent.engine.errors import ConfigError

        raise ConfigError("bench kernels times the CUDA kernels: it needs a CUDA GPU")
    device = torch.device("cuda")
    report("measuring copy bandwidth and matmul rate ...")
    bandwidth = measure_copy_bandwidth(device)
    rate = measure_matmul_rate(device)
    rows = bench_moe(device, token_counts, bandwidth, rate, report, bf16)
    rows += bench_linear(device, [1, 4, 16, 64], bandwidth, report)
    rows += bench_attention(device, contexts, bandwidth, report)
    return KernelsReport(torch.cuda.get_device_name(device), bandwidth / 1e9, rate / 1e12, rows)
