"""Tile sweep for the FP8 kernels at M2's shapes, in one GPU call: the MoE experts (per pair at
1 and 4 tokens, grouped above) and the dense FP8 linears (fused q/k/v 3072->8192, o_proj
6144->3072) at decode batch sizes. Writes every timing and the best tiles per bucket as JSON
(the source of `fp8_moe.H200_TILES` and `fp8_linear.LINEAR_TILES`) and prints a short table.

Each candidate is checked against a grouped tile's output first (relative error under 2e-2
in bf16; the GPU tests check that one against the float64 oracle), then timed as
`m2agent bench kernels` times (a CUDA graph cycling over random input sets, median of the
replays). Per-pair and linear tiles are found by coordinate descent
from the current table's choice: one dimension at a time, keep what is faster by more than
the run-to-run spread. A deadline bounds the whole sweep (compiles dominate it).

    python3 -P scripts/tune_kernels.py --json OUT.json [--deadline-s 240]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

# The sweeps' axes: per-pair / grouped MMA tiles, and the one-row GEMV tiles.
MMA_AXES: dict[str, list[int]] = {
    "block_n": [32, 64, 128],
    "programs_per_sm": [1, 2, 8, 16],
    "num_stages": [2, 4, 5],
    "num_warps": [2, 8],
    "block_k": [64],
}
GEMV_AXES: dict[str, list[int]] = {
    "block_n": [16, 32, 64, 128],
    "block_k": [128, 512],
    "num_warps": [2, 8],
    "num_stages": [1, 3, 4],
    "programs_per_sm": [1, 2, 8],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--deadline-s", type=float, default=240.0)
    parser.add_argument("--moe-tokens", default="1,4,16,64,256,1024")
    parser.add_argument("--linear-rows", default="1,4,16,64")
    parser.add_argument(
        "--quick", action="store_true", help="MoE at 1 token: fixed candidates, no descent"
    )
    args = parser.parse_args()
    moe_tokens = [int(t) for t in args.moe_tokens.split(",") if t]
    linear_rows = [int(t) for t in args.linear_rows.split(",") if t]
    deadline = time.monotonic() + args.deadline_s
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(), "moe": {}, "linear": {}}
    try:
        tune_moe(results, deadline, moe_tokens, args.quick)
        tune_linear(results, deadline, linear_rows)
        scaled_mm(results)
    finally:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    print_table(results)


def timed(calls: Sequence[Callable[[], object]]) -> tuple[float, float, float]:
    from m2agent.engine.bench.kernels import time_graph

    times = time_graph(calls, replays=30)
    return statistics.median(times), min(times), max(times)


def rel_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(got).all():
        return float("inf")
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def descend(
    start: Any,
    axes: dict[str, list[Any]],
    measure: Callable[[Any], float | None],
    deadline: float,
) -> Any:
    """Coordinate descent over dataclass fields: one pass over each axis from `start`."""
    best, best_t = start, measure(start)
    if best_t is None:
        best_t = float("inf")
    for name, values in axes.items():
        for value in values:
            if time.monotonic() > deadline:
                return best
            candidate = dataclasses.replace(best, **{name: value})
            if candidate == best:
                continue
            t = measure(candidate)
            if t is not None and t < best_t * 0.98:
                best, best_t = candidate, t
    return best


def tune_moe(
    results: dict[str, Any], deadline: float, token_counts: list[int], quick: bool = False
) -> None:
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    from m2agent.engine.bench.kernels import _moe_inputs, random_experts
    from m2agent.engine.kernels import fp8_moe

    device = torch.device("cuda")
    experts = random_experts(device, fp8=True, seed=1)
    log: list[dict[str, Any]] = []
    results["moe"]["log"] = log
    best_per_tokens: dict[int, dict[str, Any]] = {}
    results["moe"]["best"] = best_per_tokens

    def measure(
        experts: Any, tokens: int, inputs: list, ref: list, tiles: fp8_moe.TileConfig
    ) -> float | None:
        try:
            out = [
                fp8_moe.moe_experts_parts(*a, experts, tiles=tiles).materialize() for a in inputs
            ]
            err = max(rel_error(o, r) for o, r in zip(out, ref, strict=True))
            if err > 2e-2:
                log.append({"tokens": tokens, "tiles": dataclasses.asdict(tiles), "error": err})
                return None
            calls = [partial(fp8_moe.moe_experts_parts, *a, experts, tiles=tiles) for a in inputs]
            med, lo, hi = timed(calls)
        except (OutOfResources, CompilationError, RuntimeError, ValueError) as e:
            log.append({"tokens": tokens, "tiles": dataclasses.asdict(tiles), "failed": str(e)})
            return None
        log.append({"tokens": tokens, "tiles": dataclasses.asdict(tiles), "us": med,
                    "spread": [lo, hi]})  # fmt: skip
        print(f"moe x{tokens} {tiles}: {med:.1f} us", flush=True)
        return med

    kt = fp8_moe.KernelTiles
    mma_pair = fp8_moe.TileConfig(False, 16, kt(32, 128, 2, 3, 1), kt(64, 128, 4, 3, 2))
    for tokens in token_counts:
        if time.monotonic() > deadline:
            break
        sets = max(2, min(8, 64 // tokens))
        inputs = _moe_inputs(tokens, sets, device)
        current = fp8_moe.pick_tiles(tokens, 128)
        checked = fp8_moe.TileConfig.uniform(True, 16, 64, 128, 4, 3)  # the reference here
        ref = [fp8_moe.moe_experts_parts(*a, experts, tiles=checked).materialize() for a in inputs]
        m = partial(measure, experts, tokens, inputs, ref)
        baseline = m(current)
        if tokens == 1 and quick:
            candidates = [mma_pair] + [
                fp8_moe.TileConfig(False, 16, kt(gn, gk, w, st), kt(dn, dk, w, st), gemv=True)
                for gn, gk, dn, dk, w, st in [
                    (32, 256, 64, 256, 4, 2),
                    (16, 256, 32, 256, 4, 2),
                    (32, 512, 64, 512, 4, 1),
                    (32, 256, 64, 256, 8, 2),
                    (64, 128, 128, 128, 4, 3),
                    (16, 512, 32, 512, 4, 2),
                ]
            ]
        elif tokens == 1:
            axes = GEMV_AXES if current.gemv else MMA_AXES
            gate_up = descend(
                current.gate_up, axes, partial(_with, m, current, "gate_up"), deadline
            )
            with_gu = dataclasses.replace(current, gate_up=gate_up)
            down = descend(current.down, axes, partial(_with, m, with_gu, "down"), deadline)
            candidates = [dataclasses.replace(with_gu, down=down), mma_pair]
        elif tokens == 4:
            one = best_per_tokens.get(1, {}).get("tiles")
            candidates = [] if one is None else [one]
            candidates += [mma_pair, fp8_moe.TileConfig.uniform(True, 16, 64, 128, 4, 3)]
        elif tokens <= 64:
            candidates = [
                fp8_moe.TileConfig.uniform(True, bm, bn, 128, w, s)
                for bm in (16, 32)
                for bn in (64, 128)
                for w, s in ((4, 3), (4, 4), (8, 3))
            ]
        else:
            candidates = [
                fp8_moe.TileConfig.uniform(True, bm, bn, 128, w, s)
                for bm in (32, 64, 128)
                for bn in (64, 128)
                for w, s in ((4, 3), (8, 3), (8, 4))
            ]
        best, best_t = current, baseline if baseline is not None else float("inf")
        for tiles in candidates:
            if time.monotonic() > deadline:
                break
            t = m(tiles) if tiles != current else baseline
            if t is not None and t < best_t:
                best, best_t = tiles, t
        best_per_tokens[tokens] = {"tiles": best, "us": best_t, "table_us": baseline}
    for entry in best_per_tokens.values():
        entry["tiles"] = dataclasses.asdict(entry["tiles"])
    del experts
    torch.cuda.empty_cache()


def _with(measure: Callable[[Any], float | None], config: Any, field: str, value: Any):
    return measure(dataclasses.replace(config, **{field: value}))


def tune_linear(results: dict[str, Any], deadline: float, row_counts: list[int]) -> None:
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    from m2agent.engine.kernels import fp8_linear, reference

    device = torch.device("cuda")
    log: list[dict[str, Any]] = []
    best: dict[str, dict[str, Any]] = {}
    results["linear"] = {"log": log, "best": best}
    generator = torch.Generator(device=device).manual_seed(2)
    for name, (n, k) in {"qkv": (8192, 3072), "o_proj": (3072, 6144)}.items():
        weights = []
        for _ in range(4):
            dense = torch.randn(n, k, generator=generator, device=device) * 0.02
            weights.append(reference.quantize_fp8_block(dense, (128, 128)))
        gemv_best = None
        for rows in row_counts:
            if time.monotonic() > deadline:
                break
            xs = [torch.randn(rows, k, device=device).bfloat16() for _ in weights]
            pairs = list(zip(xs, weights, strict=True))
            ref = [fp8_linear.fp8_linear(x, w, s, (128, 128)) for x, (w, s) in pairs]

            def measure(
                tiles: fp8_linear.LinearTiles, name=name, rows=rows, pairs=pairs, ref=ref
            ) -> float | None:
                try:
                    out = [
                        fp8_linear.fp8_linear_parts(x, w, s, (128, 128), tiles).materialize()
                        for x, (w, s) in pairs
                    ]
                    err = max(rel_error(o, r) for o, r in zip(out, ref, strict=True))
                    if err > 2e-2:
                        log.append({"shape": name, "rows": rows, "error": err,
                                    "tiles": dataclasses.asdict(tiles)})  # fmt: skip
                        return None
                    calls = [
                        partial(fp8_linear.fp8_linear_parts, x, w, s, (128, 128), tiles)
                        for x, (w, s) in pairs
                    ]
                    med, lo, hi = timed(calls)
                except (OutOfResources, CompilationError, RuntimeError, ValueError) as e:
                    log.append({"shape": name, "rows": rows, "failed": str(e),
                                "tiles": dataclasses.asdict(tiles)})  # fmt: skip
                    return None
                log.append({"shape": name, "rows": rows, "us": med, "spread": [lo, hi],
                            "tiles": dataclasses.asdict(tiles)})  # fmt: skip
                print(f"linear {name} x{rows} {tiles}: {med:.1f} us", flush=True)
                return med

            current = fp8_linear.pick_tiles(rows)
            table_us = measure(current)
            axes = GEMV_AXES if current.gemv else MMA_AXES
            chosen = descend(current, axes, measure, deadline) if rows in (1, 16) else current
            if current.gemv:
                gemv_best = chosen
            elif gemv_best is not None and rows <= 4:  # GEMV one row per program, or the MMA
                t_gemv, t_chosen = measure(gemv_best), measure(chosen)
                if t_gemv is not None and (t_chosen is None or t_gemv < t_chosen):
                    chosen = gemv_best
            best[f"{name} x{rows}"] = {
                "tiles": dataclasses.asdict(chosen),
                "us": measure(chosen) if chosen != current else table_us,
                "table_us": table_us,
                "bytes": n * k + rows * (n + k) * 2,
            }


def scaled_mm(results: dict[str, Any]) -> None:
    """torch._scaled_mm with 1x128 activation / 128x128 weight block scales at the q/k/v shape
    (activations quantized to FP8 per 128 columns first, timed with that step), if the build
    takes those layouts; the error or the time is recorded either way."""
    from m2agent.engine.bench.kernels import time_graph

    device = torch.device("cuda")
    out: dict[str, Any] = {}
    results["scaled_mm_qkv"] = out
    n, k = 8192, 3072
    w = (torch.randn(n, k, device=device) * 0.02).to(torch.float8_e4m3fn)
    w_scale = torch.rand(n // 128, k // 128, device=device) + 0.5
    for rows in (1, 16, 64):
        x = torch.randn(rows, k, device=device).bfloat16()

        def run(x: torch.Tensor = x) -> torch.Tensor:
            groups = x.float().view(x.shape[0], k // 128, 128)
            amax = groups.abs().amax(-1).clamp(min=1e-12)
            x_scale = amax / 448.0
            xq = (groups / x_scale[..., None]).view(x.shape[0], k).to(torch.float8_e4m3fn)
            # cuBLAS block scaling wants the activation scales outer-dim-major (column-major).
            return torch._scaled_mm(
                xq,
                w.t(),
                scale_a=x_scale.t().contiguous().t(),
                scale_b=w_scale.t(),
                out_dtype=torch.bfloat16,
            )

        try:
            run()
            times = time_graph([run] * 4, replays=30)
            out[f"x{rows}"] = {"us": statistics.median(times), "spread": [min(times), max(times)]}
        except Exception as e:  # record why this build refuses it
            out[f"x{rows}"] = {"failed": f"{type(e).__name__}: {e}"[:400]}


def print_table(results: dict[str, Any]) -> None:
    print("\n== best tiles ==")
    for tokens, entry in results["moe"].get("best", {}).items():
        print(f"moe x{tokens}: {entry['us']:.1f} us (table {entry['table_us']}) {entry['tiles']}")
    for key, entry in results["linear"].get("best", {}).items():
        gbs = entry["bytes"] / entry["us"] / 1e3 if entry["us"] else 0
        print(
            f"linear {key}: {entry['us']:.1f} us ({gbs:.0f} GB/s; table {entry['table_us']}) "
            f"{entry['tiles']}"
        )
    print(f"scaled_mm qkv: {results.get('scaled_mm_qkv')}")


if __name__ == "__main__":
    main()
