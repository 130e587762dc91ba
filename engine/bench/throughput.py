"""`m2agent bench throughput`: output tokens per second with N concurrent streams (continuous
batching), against transformers generating the same N prompts as one batch."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from m2agent.engine.bench.common import (
    Report,
    build_transformers_model,
    open_model,
    random_prompt,
    sync,
)
from m2agent.engine.kernels import compiles
from m2agent.engine.llm import LLM
from m2agent.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    """Medians of the timed rounds (each after a warm-up round at the same stream count);
    `*_runs` hold every round's value."""

    streams: int
    engine_tok_s: float  # all streams' output tokens per second, end to end
    engine_decode_tok_s: float  # the same, once every stream is past its prefill
    engine_last_ttft_ms: float  # time until the last stream has its first token
    baseline_tok_s: float | None
    engine_tok_s_runs: list[float] = field(default_factory=list)
    baseline_tok_s_runs: list[float] = field(default_factory=list)
    engine_last_ttft_ms_runs: list[float] = field(default_factory=list)  # a stall shows here
    # The Triton kernel variants each timed round built, "kernel (key) seconds" (None: not
    # counted, no Triton hooks); a warmed-up engine builds none.
    engine_builds_runs: list[list[str]] | None = None


@dataclass(frozen=True, slots=True)
class ThroughputReport:
    device: str
    layers: int
    prompt_tokens: int
    new_tokens: int
    rows: list[ThroughputRow]
    quant: str = "bf16"  # the engine's weights: fp8 (block-scaled, as stored) or bf16
    temperature: float = 0.0  # 0: greedy; else M2's sampling (top-p 0.95, top-k 40)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lines = [
            f"device: {self.device}; {self.layers} layers, {self.quant} weights, "
            f"prompt {self.prompt_tokens}, {self.new_tokens} new tokens per stream, "
            + ("greedy" if self.temperature == 0 else f"sampled at temperature {self.temperature}"),
            f"{'streams':>8} {'engine tok/s':>13} {'(runs)':>15} {'decode tok/s':>13} "
            f"{'last TTFT ms':>13} {'transformers tok/s':>19} {'(runs)':>15}",
        ]
        for r in self.rows:
            base = f"{r.baseline_tok_s:.1f}" if r.baseline_tok_s is not None else "-"
            lines.append(
                f"{r.streams:>8} {r.engine_tok_s:13.1f} {_spread(r.engine_tok_s_runs):>15} "
                f"{r.engine_decode_tok_s:13.1f} {r.engine_last_ttft_ms:13.1f} {base:>19} "
                f"{_spread(r.baseline_tok_s_runs):>15}"
            )
        for r in self.rows:
            built = [b for run in r.engine_builds_runs or [] for b in run]
            if built:
                lines.append(f"{r.streams} streams: Triton kernels built in timed rounds:")
                lines += [f"  {b}" for b in built]
        return "\n".join(lines)


def _spread(runs: list[float]) -> str:
    return f"{min(runs):.0f}-{max(runs):.0f}" if runs else ""


@dataclass(frozen=True, slots=True)
class _Round:
    total_s: float
    last_first_token_s: float  # when the last stream got its first token
    decode_tokens: int  # tokens produced after that
    decode_s: float
    compiled: list[compiles.Compile]  # Triton kernel variants built during the round


def _builds(done: _Round) -> list[str]:
    return [f"{c.kernel} ({c.key}) {c.seconds:.2f} s" for c in done.compiled]


def round_params(new_tokens: int, temperature: float) -> SamplingParams:
    """Greedy at temperature 0; else M2's published sampling (top-p 0.95, top-k 40), seeded."""
    if temperature == 0:
        return SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    return SamplingParams(
        temperature=temperature, top_p=0.95, top_k=40, seed=0, max_tokens=new_tokens,
        ignore_eos=True,
    )  # fmt: skip


def engine_round(
    llm: LLM, prompts: list[list[int]], new_tokens: int, temperature: float = 0.0
) -> _Round:
    """All prompts generating `new_tokens` each, concurrently, through the engine's steps."""
    params = round_params(new_tokens, temperature)
    engine = llm.engine
    sync(llm.device)
    mark = compiles.count()
    started = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.add_request(f"bench-{i}", prompt, params)
    seen: set[str] = set()
    produced = 0
    first_all = 0.0
    produced_at_first_all = 0
    while engine.has_unfinished_requests():
        for delta in engine.step():
            seen.add(delta.request_id)
            produced += len(delta.token_ids)
        if not first_all and len(seen) == len(prompts):
            first_all = time.perf_counter()
            produced_at_first_all = produced
    sync(llm.device)
    ended = time.perf_counter()
    if produced != new_tokens * len(prompts):
        raise RuntimeError(f"expected {new_tokens * len(prompts)} tokens, got {produced}")
    return _Round(
        ended - started,
        first_all - started,
        produced - produced_at_first_all,
        ended - first_all,
        compiles.since(mark),
    )


def baseline_round(
    model: Any, prompts: list[list[int]], new_tokens: int, temperature: float = 0.0
) -> float:
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, device=device)
    params = round_params(new_tokens, temperature)  # the same filters as the engine's rounds
    sampling: dict[str, Any] = {"do_sample": False}
    if not params.is_greedy:
        sampling = dict(
            do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k
        )
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
            **sampling,
        )
    sync(device)
    return time.perf_counter() - started


def run_throughput_bench(
    *,
    model_path: Path | None,
    dummy_config: Path | None,
    layers: int,
    streams: list[int],
    prompt_tokens: int,
    new_tokens: int,
    device: str,
    baseline: bool,
    experts_impl: str = "grouped_mm",
    tp: int = 1,
    quant: str = "auto",
    ep: int | None = None,  # expert-parallel size (None: the default layout)
    repeats: int = 3,  # timed rounds per stream count (after one warm-up round)
    temperature: float = 0.0,
    report: Report = print,
) -> ThroughputReport:
    """With tp > 1 the transformers baseline is skipped: it has no tensor parallelism, and its
    one-GPU numbers are in the tp 1 report."""
    with tempfile.TemporaryDirectory(prefix="m2agent-bench-") as tmp:
        blocks = max(streams) * -(-(prompt_tokens + new_tokens) // 16) + 8
        llm, folder = open_model(
            model_path, dummy_config, layers, device, Path(tmp), report, quant,
            max_num_seqs=max(streams), num_kv_blocks=blocks, block_size=16,
            tensor_parallel_size=tp,
            expert_parallel_size=ep,
        )  # fmt: skip
        vocab = llm.config.vocab_size
        all_prompts = [random_prompt(vocab, prompt_tokens, seed=i) for i in range(max(streams))]
        rounds: dict[int, list[_Round]] = {}
        for n in streams:
            # Warm-up at this batch size: its prefill chunks and decode graphs (the first use of
            # a shape compiles kernels for its token-count bucket and sizes NCCL buffers).
            engine_round(llm, all_prompts[:n], min(new_tokens, 8), temperature)
            rounds[n] = []
            for i in range(repeats):
                llm.engine.blocks.reset_prefix_cache()  # distinct prompts anyway; keep runs cold
                rounds[n].append(engine_round(llm, all_prompts[:n], new_tokens, temperature))
                done = rounds[n][-1]
                rate = n * new_tokens / done.total_s
                built = ""
                if done.compiled:
                    took = sum(c.seconds for c in done.compiled)
                    built = f" ({len(done.compiled)} kernel variants built, {took:.2f} s)"
                report(
                    f"  m2agent engine, {n} streams, run {i + 1}/{repeats}: {rate:.1f} tok/s{built}"
                )
        baseline_runs: dict[int, list[float]] = {}
        if baseline and tp > 1:
            report("no transformers baseline with tensor parallelism: compare with --tp 1")
        elif baseline:
            report(f"building transformers' MiniMaxM2ForCausalLM ({experts_impl} experts) ...")
            model = build_transformers_model(llm, folder, experts_impl)
            for n in streams:  # warmed at each batch size: its first run is several times slower
                baseline_round(model, all_prompts[:n], min(new_tokens, 16), temperature)
                baseline_runs[n] = []
                for i in range(repeats):
                    took = baseline_round(model, all_prompts[:n], new_tokens, temperature)
                    rate = n * new_tokens / took
                    baseline_runs[n].append(rate)
                    report(f"  transformers, {n} streams, run {i + 1}/{repeats}: {rate:.1f} tok/s")
            del model
        rows = []
        counted = compiles.available()
        for n in streams:
            rates = [n * new_tokens / r.total_s for r in rounds[n]]
            ttfts = [r.last_first_token_s * 1e3 for r in rounds[n]]
            base = baseline_runs.get(n, [])
            rows.append(
                ThroughputRow(
                    streams=n,
                    engine_tok_s=statistics.median(rates),
                    engine_decode_tok_s=statistics.median(
                        r.decode_tokens / max(r.decode_s, 1e-9) for r in rounds[n]
                    ),
                    engine_last_ttft_ms=statistics.median(ttfts),
                    baseline_tok_s=statistics.median(base) if base else None,
                    engine_tok_s_runs=rates,
                    baseline_tok_s_runs=base,
                    engine_last_ttft_ms_runs=ttfts,
                    engine_builds_runs=[_builds(r) for r in rounds[n]] if counted else None,
                )
            )
        name = torch.cuda.get_device_name(llm.device) if llm.device.type == "cuda" else "cpu"
        name += f" x{tp}" if tp > 1 else ""
        llm.close()
        quant = "fp8" if llm.config.fp8 else "bf16"
        layers = llm.config.num_hidden_layers
        return ThroughputReport(name, layers, prompt_tokens, new_tokens, rows, quant, temperature)
