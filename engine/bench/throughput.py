"""`m2agent bench throughput`: output tokens per second with N concurrent streams (continuous
batching), against transformers generating the same N prompts as one batch."""

from __future__ import annotations

import json
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
from m2agent.engine.llm import LLM
from m2agent.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class ThroughputRow:
    streams: int
    engine_tok_s: float  # all streams' output tokens per second, end to end
    engine_per_stream_tok_s: float
    baseline_tok_s: float | None


@dataclass(frozen=True, slots=True)
class ThroughputReport:
    device: str
    layers: int
    prompt_tokens: int
    new_tokens: int
    rows: list[ThroughputRow]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lines = [
            f"device: {self.device}; {self.layers} layers, prompt {self.prompt_tokens}, "
            f"{self.new_tokens} new tokens per stream",
            f"{'streams':>8} {'engine tok/s':>14} {'per stream':>12} {'transformers tok/s':>20}",
        ]
        for r in self.rows:
            base = f"{r.baseline_tok_s:.1f}" if r.baseline_tok_s is not None else "-"
            per_stream = r.engine_per_stream_tok_s
            lines.append(f"{r.streams:>8} {r.engine_tok_s:14.1f} {per_stream:12.1f} {base:>20}")
        return "\n".join(lines)


def engine_round(llm: LLM, prompts: list[list[int]], new_tokens: int) -> float:
    """Seconds for all prompts to produce `new_tokens` each, run concurrently."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    sync(llm.device)
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    sync(llm.device)
    assert all(len(o.token_ids) == new_tokens for o in outputs)
    return time.perf_counter() - started


def baseline_round(model: Any, prompts: list[list[int]], new_tokens: int) -> float:
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, device=device)
    sync(device)
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
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
    report: Report = print,
) -> ThroughputReport:
    with tempfile.TemporaryDirectory(prefix="m2agent-bench-") as tmp:
        llm, folder = open_model(
            model_path, dummy_config, layers, device, Path(tmp), report, max_num_seqs=max(streams)
        )
        vocab = llm.config.vocab_size
        all_prompts = [random_prompt(vocab, prompt_tokens, seed=i) for i in range(max(streams))]
        engine_round(llm, all_prompts[:2], 8)  # warm-up
        engine_times = {}
        for n in streams:
            llm.engine.blocks.reset_prefix_cache()  # distinct prompts anyway; keep runs cold
            engine_times[n] = engine_round(llm, all_prompts[:n], new_tokens)
            report(f"  m2agent engine, {n} streams: {n * new_tokens / engine_times[n]:.1f} tok/s")
        baseline_times: dict[int, float] = {}
        if baseline:
            report(f"building transformers' MiniMaxM2ForCausalLM ({experts_impl} experts) ...")
            model = build_transformers_model(llm, folder, experts_impl)
            baseline_round(model, all_prompts[:1], 4)  # warm-up
            for n in streams:
                baseline_times[n] = baseline_round(model, all_prompts[:n], new_tokens)
                report(
                    f"  transformers, {n} streams: {n * new_tokens / baseline_times[n]:.1f} tok/s"
                )
            del model
        rows = [
            ThroughputRow(
                streams=n,
                engine_tok_s=n * new_tokens / engine_times[n],
                engine_per_stream_tok_s=new_tokens / engine_times[n],
                baseline_tok_s=n * new_tokens / baseline_times[n] if n in baseline_times else None,
            )
            for n in streams
        ]
        name = torch.cuda.get_device_name(llm.device) if llm.device.type == "cuda" else "cpu"
        return ThroughputReport(name, llm.config.num_hidden_layers, prompt_tokens, new_tokens, rows)
