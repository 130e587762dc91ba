"""A/B timing of the batch-1 decode step on a GPU: one model per depth, many settings.

For each depth (and prompt length) this builds one FP8 model with dummy weights, decodes a
few tokens of a random prompt, then for each setting (environment switches, tile tables,
module constants: `SETTINGS` below) captures the batch-1 decode graph again
(`DecodeGraphs.recapture`) and replays it (`bench.latency.replay_ms`): the GPU time of one
step, median of several rounds of replays, with the range (`--profile`: and its kernels).
Every capture replays the same inputs, so settings that leave the math alone must give the
same logits bit for bit (checked against the first setting and printed); tile changes move
the sums' order (the max difference is printed). The per-layer slope between two depths is
printed per setting.

    python3 -P scripts/ab_decode.py --layers 6 18 [--prompt 512] [--only default,evict-off]
        [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from m2agent.engine.bench.common import open_model, random_prompt, resolve_config
from m2agent.engine.bench.latency import replay_ms
from m2agent.engine.kernels import (
    fp8_linear,
    fp8_moe,
    fused_small_ops,
    paged_attention_triton,
)
from m2agent.engine.kernels.fp8_linear import LinearTiles
from m2agent.engine.kernels.fp8_moe import KernelTiles, TileConfig
from m2agent.engine.kernels.occupancy import split_k, split_k_waves
from m2agent.engine.sampling import SamplingParams


@dataclass
class Setting:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    gate_up: KernelTiles | None = None  # the batch-1 GEMV bucket's tiles, when changed
    down: KernelTiles | None = None
    linear: LinearTiles | None = None  # the one-row GEMV bucket of the FP8 linear
    patch: dict[str, object] = field(default_factory=dict)  # "module.NAME": value


# Modules whose constants a setting may change (read at launch, so a recapture takes them).
PATCHABLE = {
    m.__name__.rsplit(".", 1)[1]: m
    for m in (fp8_linear, fp8_moe, fused_small_ops, paged_attention_triton)
}


def pow2_splits(
    programs: int, k_blocks: int, device: torch.device, per_sm: int = 4, max_split: int = 16
) -> int:
    """Round 6's split-K of the one-row GEMV: the smallest power of two reaching `per_sm`."""
    return split_k(programs, k_blocks, device, max_split, per_sm)


def fixed_splits(qkv: int | None = None, o: int | None = None) -> Callable[..., int]:
    """A split-K for the one-row GEMV that cuts M2's q/k/v (256 tiles of 32 rows) or o_proj
    (96 tiles) into the given number of pieces; else the default."""
    default = split_k_waves

    def choose(
        programs: int, k_blocks: int, device: torch.device, per_sm: int = 4, max_split: int = 16
    ) -> int:
        fixed = {256: qkv, 96: o}.get(programs)
        return fixed or default(programs, k_blocks, device, per_sm, max_split)

    return choose


# The defaults (the tables and switches as committed) first, then one change at a time.
OLD_DOWN = KernelTiles(64, 256, 4, 2)
EVICT = "M2AGENT_EVICT_FIRST"
SETTINGS = [
    Setting("default"),
    Setting("evict-off", {EVICT: "0"}),
    Setting("norms-finish", patch={"fused_small_ops.PENDING_NORMS": False}),
    Setting("attn-prefetch-off", patch={"paged_attention_triton.PREFETCH_FIRST_TILE": False}),
    Setting("pow2-splits", patch={"fp8_linear.split_k_waves": pow2_splits}),
    Setting("qkv6", patch={"fp8_linear.split_k_waves": fixed_splits(qkv=6)}),
    Setting("o12", patch={"fp8_linear.split_k_waves": fixed_splits(o=12)}),
    Setting("down-k256", down=OLD_DOWN),
    Setting("lin-pps4", linear=LinearTiles(1, 32, 256, 4, 2, 4, gemv=True)),  # round 5's
    Setting("lin-pps2", linear=LinearTiles(1, 32, 256, 4, 2, 2, gemv=True)),
    Setting("splits-16", patch={"paged_attention_triton.MAX_SPLITS": 16}),
    Setting("router-e1", patch={"fused_small_ops.ROUTER_BLOCK_E": 1}),
    Setting("router-e4", patch={"fused_small_ops.ROUTER_BLOCK_E": 4}),
    Setting("norm-slice-128", patch={"fused_small_ops.NORM_SLICE": 128}),
    Setting("norm-slice-512", patch={"fused_small_ops.NORM_SLICE": 512}),
    Setting("qk-norm-4warps", patch={"fused_small_ops.QK_NORM_WARPS": 4}),
    Setting("topk-select", patch={"fused_small_ops.ROUTER_SORT": False}),
    Setting("pdl-off", {"M2AGENT_PDL": "0"}),
]


@contextmanager
def applied(setting: Setting) -> Iterator[None]:
    saved_env = {k: os.environ.get(k) for k in setting.env}
    saved_tiles, saved_linear = fp8_moe.H200_TILES, fp8_linear.LINEAR_TILES
    saved_patch = {}
    for key, value in setting.patch.items():
        module, name = key.split(".")
        saved_patch[key] = getattr(PATCHABLE[module], name)
        setattr(PATCHABLE[module], name, value)
    os.environ.update(setting.env)
    if setting.linear:
        fp8_linear.LINEAR_TILES = ((1, setting.linear), *saved_linear[1:])
    if setting.gate_up or setting.down:
        limit, first = saved_tiles[0]
        changed = TileConfig(
            first.grouped, first.block_m, setting.gate_up or first.gate_up,
            setting.down or first.down, first.gemv,
        )  # fmt: skip
        fp8_moe.H200_TILES = ((limit, changed), *saved_tiles[1:])
    try:
        yield
    finally:
        fp8_moe.H200_TILES, fp8_linear.LINEAR_TILES = saved_tiles, saved_linear
        for key, value in saved_patch.items():
            module, name = key.split(".")
            setattr(PATCHABLE[module], name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_table(graph: torch.cuda.CUDAGraph, title: str, replays: int = 20) -> str:
    """The kernels of `replays` replays of the graph (CUPTI, via torch.profiler): per kernel
    its launches per step, mean GPU time, and GPU time per step; then their sum. Under PDL a
    kernel's time includes what it waited for its inputs; with `M2AGENT_PDL=0` each is its
    own, and the sum against the step's time shows the gaps between them."""
    from torch.profiler import ProfilerActivity, profile

    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    rows = [
        (e.key, e.count / replays, e.self_device_time_total / e.count, e.self_device_time_total)
        for e in prof.key_averages()
        if e.self_device_time_total > 0 and e.count
    ]
    rows.sort(key=lambda r: -r[3])
    lines = [f"kernels per step, {title} ({replays} replays):"]
    lines += [
        f"  {name[:48]:48s} {per_step:5.1f} x {mean:7.2f} us = {total / replays:8.1f} us"
        for name, per_step, mean, total in rows
    ]
    lines.append(f"  {'sum':48s} {sum(r[3] for r in rows) / replays:27.1f} us")
    return "\n".join(lines)


def run_depth(layers: int, prompt: int, settings: list[Setting], args: argparse.Namespace) -> dict:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        blocks = -(-(prompt + 64) // 16) + 4
        llm, _ = open_model(
            None, resolve_config("minimax-m2"), layers, "cuda", Path(tmp), print, "fp8",
            max_num_seqs=1, num_kv_blocks=blocks, block_size=16, max_model_len=prompt + 64,
        )  # fmt: skip
        ids = random_prompt(llm.config.vocab_size, prompt, seed=0)
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        list(llm.stream_tokens(ids, params))
        graphs = llm.engine.runner.graphs
        if graphs is None:
            raise SystemExit("the engine captured no decode graphs (CUDA graphs off?)")
        reference = None
        for setting in settings:
            try:
                with applied(setting):
                    graphs.recapture()
                    graph = graphs.graphs[1]
                    times = [replay_ms(graph, args.replays) for _ in range(args.rounds)]
                    logits = graphs.outputs[1].float().clone()
                    if args.profile:
                        print(kernel_table(graph, f"{layers} layers, {setting.name}"))
            except Exception as error:  # one setting's failure: say so, time the others
                print(f"{layers:3d} layers: {setting.name} FAILED: {error!r}", flush=True)
                continue
            if reference is None:
                reference = logits
            diff = (logits - reference).abs().max().item()
            median = statistics.median(times)
            results[setting.name] = {"ms": median, "runs": times, "max_diff": diff}
            print(
                f"{layers:3d} layers, prompt {prompt}: {setting.name:16s} {median * 1e3:8.1f} us"
                f" ({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}); logits vs first:"
                f" {'same bits' if diff == 0 else f'max diff {diff:.3g}'}",
                flush=True,
            )
        llm.close()
    torch.cuda.empty_cache()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 18])
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--only", help="comma list of setting names")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--replays", type=int, default=50)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", action="store_true", help="per-kernel GPU time per setting")
    args = parser.parse_args()
    settings = SETTINGS
    if args.only:
        wanted = args.only.split(",")
        settings = [s for s in SETTINGS if s.name in wanted]
    print(torch.cuda.get_device_name(), "L2", torch.cuda.get_device_properties(0).L2_cache_size)
    by_depth = {n: run_depth(n, args.prompt, settings, args) for n in args.layers}
    if len(args.layers) >= 2:
        lo, hi = min(args.layers), max(args.layers)
        print(f"per-layer slope ({lo} -> {hi} layers), us:")
        for s in settings:
            if s.name not in by_depth[hi] or s.name not in by_depth[lo]:
                continue
            slope = (by_depth[hi][s.name]["ms"] - by_depth[lo][s.name]["ms"]) / (hi - lo) * 1e3
            print(f"  {s.name:16s} {slope:6.1f}")
    if args.json:
        args.json.write_text(json.dumps({"prompt": args.prompt, "by_layers": by_depth}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
