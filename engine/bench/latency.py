"""`m2agent bench latency`: batch-1 time to first token and decode tok/s of our engine and of
transformers' MiniMaxM2ForCausalLM on the same weights, beside the bandwidth floor.

Full width, reduced depth: the published config with fewer layers, bf16 dummy weights (or a
real checkpoint). Random routing is near uniform: right for speed, meaningless for quality.

With tensor parallelism (`tp` > 1) the baseline is our own engine on one GPU, timed in the
same run after the parallel one (transformers has no tensor parallelism to compare), and the
bound is that of `tp` GPUs reading their slices at once.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
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
from m2agent.engine.bench.roofline import decode_bytes_per_token, measure_copy_bandwidth
from m2agent.engine.llm import LLM
from m2agent.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class Timing:
    name: str
    ttft_ms: float  # cold: prefill of a prompt never seen before (no cached prefix) + 1 token
    decode_tok_s: float  # tokens after the first, per second
    runs: int
    decode_tok_s_runs: list[float]  # every timed run, for the spread


@dataclass(frozen=True, slots=True)
class LatencyReport:
    device: str
    layers: int
    prompt_tokens: int
    new_tokens: int
    bytes_per_token: int
    copy_bandwidth_gb_s: float
    bound_tok_s: float
    timings: list[Timing]
    decode_graph_gpu_ms: float | None = None  # one captured decode step, GPU time alone
    tensor_parallel_size: int = 1
    quant: str = "bf16"  # the engine's weights: fp8 (block-scaled, as stored) or bf16
    weight_bytes: int = 0  # resident parameter bytes of the engine's model (this rank)
    kv_pool_tokens: int = 0
    peak_memory_gb: float = 0.0  # the engine's peak CUDA memory, KV pool and graphs included
    expert_parallel_size: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lines = [
            f"device: {self.device}"
            + (f" x{self.tensor_parallel_size}" if self.tensor_parallel_size > 1 else "")
            + (f" (ep {self.expert_parallel_size})" if self.expert_parallel_size > 1 else "")
            + f"; {self.layers} layers, prompt {self.prompt_tokens}, "
            f"{self.new_tokens} new tokens, batch 1, {self.quant} weights "
            f"({self.weight_bytes / 1e9:.2f} GB resident; KV pool {self.kv_pool_tokens} tokens; "
            f"peak {self.peak_memory_gb:.1f} GB)",
            f"{'':28} {'cold TTFT ms':>12} {'decode tok/s':>14}",
        ]
        for t in self.timings:
            spread = f"{min(t.decode_tok_s_runs):.1f}-{max(t.decode_tok_s_runs):.1f}"
            lines.append(f"{t.name:28} {t.ttft_ms:12.1f} {t.decode_tok_s:14.1f}   (runs {spread})")
        lines.append(
            f"{'bandwidth bound':28} {'':>12} {self.bound_tok_s:14.1f}   "
            f"({self.bytes_per_token / 1e9:.2f} GB/token at {self.copy_bandwidth_gb_s:.0f} GB/s"
            + (f" x {self.tensor_parallel_size} GPUs)" if self.tensor_parallel_size > 1 else ")")
        )
        if self.decode_graph_gpu_ms is not None:
            lines.append(
                f"{'decode graph, GPU only':28} {'':>12} {1e3 / self.decode_graph_gpu_ms:14.1f}   "
                f"({self.decode_graph_gpu_ms:.3f} ms per step: the rest is host time)"
            )
        return "\n".join(lines)


def time_engine(
    llm: LLM,
    prompt_tokens: int,
    new_tokens: int,
    repeats: int,
    report: Report,
    name: str = "m2agent engine",
) -> Timing:
    """Each run has a prompt never seen before, so its TTFT is a cold prefill (no cached
    prefix); a warm-up run of another prompt of the same length compiles the kernels first."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    warm_up = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    vocab = llm.config.vocab_size
    list(llm.stream_tokens(random_prompt(vocab, prompt_tokens, seed=1000), warm_up))
    ttfts, rates = [], []
    for i in range(repeats):
        prompt = random_prompt(vocab, prompt_tokens, seed=i)
        sync(llm.device)
        started = time.perf_counter()
        first = last = started
        count = 0
        for _ in llm.stream_tokens(prompt, params):
            count += 1
            last = time.perf_counter()  # sampling returns a Python int: the step has synced
            if count == 1:
                first = last
        ttfts.append((first - started) * 1e3)
        rates.append((count - 1) / (last - first))
        report(f"  {name} run {i + 1}/{repeats}: {ttfts[-1]:.1f} ms, {rates[-1]:.1f} tok/s")
    return Timing(name, statistics.median(ttfts), statistics.median(rates), repeats, rates)


def graph_step_ms(llm: LLM, replays: int = 50) -> float | None:
    """GPU time of one captured batch-1 decode step (replaying the last step's inputs)."""
    graphs = llm.engine.runner.graphs
    if graphs is None or 1 not in graphs.graphs:
        return None
    return replay_ms(graphs.graphs[1], replays)


def replay_ms(graph: torch.cuda.CUDAGraph, replays: int = 50) -> float:
    """GPU time of one replay of `graph`: the mean of `replays`, after one untimed."""
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / replays


def profile_decode(llm: LLM, prompt: list[int], report: Report, steps: int = 16) -> None:
    """The CUDA kernels of a few eager decode steps, by GPU time (for finding the slow part)."""
    from torch.profiler import ProfilerActivity, profile

    graphs, llm.engine.runner.graphs = llm.engine.runner.graphs, None  # eager: kernels visible
    try:
        params = SamplingParams(temperature=0, max_tokens=steps, ignore_eos=True)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            list(llm.stream_tokens(prompt[:64], params))
        report(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))
    finally:
        llm.engine.runner.graphs = graphs


def time_transformers(
    model: Any, prompt: list[int], new_tokens: int, repeats: int, name: str, report: Report
) -> Timing:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)

    def run(n: int) -> float:
        sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync(device)
        return time.perf_counter() - started

    run(8)  # warm-up at this prompt length
    ttfts, rates = [], []
    for i in range(repeats):
        first, total = run(1), run(new_tokens)
        ttfts.append(first * 1e3)
        rates.append((new_tokens - 1) / max(total - first, 1e-9))
        report(f"  {name} run {i + 1}/{repeats}: {ttfts[-1]:.1f} ms, {rates[-1]:.1f} tok/s")
    return Timing(name, statistics.median(ttfts), statistics.median(rates), repeats, rates)


def run_latency_bench(
    *,
    model_path: Path | None,
    dummy_config: Path | None,
    layers: int,
    prompt_tokens: int,
    new_tokens: int,
    device: str,
    repeats: int,
    baseline: bool,
    experts_impl: str = "grouped_mm",
    profile: bool = False,
    tp: int = 1,
    quant: str = "auto",
    kv_tokens: int = 0,
    ep: int | None = None,  # expert-parallel size (None: the default layout)
    report: Report = print,
) -> LatencyReport:
    with tempfile.TemporaryDirectory(prefix="m2agent-bench-") as tmp:
        pool_tokens = max(kv_tokens, prompt_tokens + new_tokens)
        blocks = -(-pool_tokens // 16) + 4
        options: dict[str, Any] = dict(
            max_num_seqs=1, num_kv_blocks=blocks, block_size=16,
            max_model_len=max(pool_tokens, prompt_tokens + new_tokens + 16),
        )  # fmt: skip
        if device != "cpu" and torch.cuda.is_available():  # else open_model says why not
            torch.cuda.reset_peak_memory_stats()
        llm, folder = open_model(
            model_path, dummy_config, layers, device, Path(tmp), report, quant,
            tensor_parallel_size=tp, expert_parallel_size=ep, **options,
        )  # fmt: skip
        weight_bytes = sum(p.numel() * p.element_size() for p in llm.model.parameters())
        prompt_ids = random_prompt(llm.config.vocab_size, prompt_tokens, seed=0)
        layout = llm.engine.runner.tp
        name = "m2agent engine" + (f", tp {tp}" if tp > 1 else "")
        name += f" ep {layout.expert_parallel_size}" if layout.expert_parallel_size > 1 else ""
        report(f"timing the {name} ...")
        timings = [time_engine(llm, prompt_tokens, new_tokens, repeats, report, name)]
        peak = torch.cuda.max_memory_allocated() / 1e9 if device != "cpu" else 0.0
        # Replaying rank 0's graph alone would wait forever on the other ranks' collectives.
        graph_ms = graph_step_ms(llm) if llm.device.type == "cuda" and tp == 1 else None
        if profile:
            profile_decode(llm, prompt_ids, report)
        if baseline and tp > 1:
            llm.close()
            del llm
            torch.cuda.empty_cache()
            single = Path(tmp) / "single"
            single.mkdir()
            llm, _ = open_model(
                model_path, dummy_config, layers, device, single, report, quant, **options
            )
            timings.append(
                time_engine(
                    llm, prompt_tokens, new_tokens, repeats, report, "m2agent engine, 1 GPU"
                )
            )
        elif baseline:
            report(f"building transformers' MiniMaxM2ForCausalLM ({experts_impl} experts) ...")
            reference = build_transformers_model(llm, Path(folder), experts_impl)
            name = f"transformers ({experts_impl})"
            timings.append(
                time_transformers(reference, prompt_ids, new_tokens, repeats, name, report)
            )
            del reference
        report("measuring copy bandwidth ...")
        bandwidth = measure_copy_bandwidth(llm.device, 1 << 30 if device != "cpu" else 1 << 26)
        context = prompt_tokens + new_tokens // 2
        # FP8: one byte per weight plus one fp32 scale per 128x128 block.
        element = 1 + 4 / (128 * 128) if llm.config.fp8 else 2
        per_token = decode_bytes_per_token(llm.config, weight_bytes=element, context_tokens=context)
        name = torch.cuda.get_device_name(llm.device) if llm.device.type == "cuda" else "cpu"
        llm.close()
        return LatencyReport(
            device=name,
            layers=llm.config.num_hidden_layers,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            bytes_per_token=per_token,
            copy_bandwidth_gb_s=bandwidth / 1e9,
            bound_tok_s=bandwidth * tp / per_token,
            timings=timings,
            decode_graph_gpu_ms=graph_ms,
            tensor_parallel_size=tp,
            quant="fp8" if llm.config.fp8 else "bf16",
            weight_bytes=weight_bytes,
            kv_pool_tokens=(blocks - 4) * 16,
            peak_memory_gb=peak,
            expert_parallel_size=layout.expert_parallel_size,
        )
