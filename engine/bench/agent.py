"""`m2agent bench agent`: one agent turn. Time to first token for a request whose long prefix
(the conversation so far) is cached, against the same request with a cold cache."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from m2agent.engine.bench.common import Report, open_model, random_prompt, sync
from m2agent.engine.llm import LLM
from m2agent.engine.sampling import SamplingParams


@dataclass(frozen=True, slots=True)
class AgentReport:
    device: str
    layers: int
    prefix_tokens: int
    new_tokens: int
    cold_ttft_ms: float
    cached_ttft_ms: float
    cached_prompt_tokens: int
    runs: int

    @property
    def ratio(self) -> float:
        return self.cached_ttft_ms / self.cold_ttft_ms

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ratio": self.ratio}, indent=2)

    def table(self) -> str:
        return "\n".join(
            [
                f"device: {self.device}; {self.layers} layers; prompt = {self.prefix_tokens}-token "
                f"prefix + {self.new_tokens} new tokens",
                f"cold TTFT    {self.cold_ttft_ms:10.1f} ms",
                f"cached TTFT  {self.cached_ttft_ms:10.1f} ms   "
                f"({self.cached_prompt_tokens} prompt tokens from the prefix cache)",
                f"cached/cold  {100 * self.ratio:10.1f} %",
            ]
        )


def first_token(llm: LLM, prompt: list[int]) -> tuple[float, int]:
    """(ms to the first token, prompt tokens served from the cache)."""
    sync(llm.device)
    started = time.perf_counter()
    (out,) = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    sync(llm.device)
    return (time.perf_counter() - started) * 1e3, out.num_cached_tokens


def run_agent_bench(
    *,
    model_path: Path | None,
    dummy_config: Path | None,
    layers: int,
    prefix_tokens: int,
    new_tokens: int,
    device: str,
    repeats: int,
    tp: int = 1,
    quant: str = "auto",
    ep: int | None = None,  # expert-parallel size (None: the default layout)
    report: Report = print,
) -> AgentReport:
    with tempfile.TemporaryDirectory(prefix="m2agent-bench-") as tmp:
        llm, _ = open_model(
            model_path,
            dummy_config,
            layers,
            device,
            Path(tmp),
            report,
            quant,
            max_num_seqs=1,
            max_model_len=prefix_tokens + new_tokens + 64,
            block_size=16,
            num_kv_blocks=2 * (-(-(prefix_tokens + 2 * new_tokens) // 16)) + 8,
            tensor_parallel_size=tp,
            expert_parallel_size=ep,
        )
        vocab = llm.config.vocab_size
        prefix = random_prompt(vocab, prefix_tokens, seed=1)
        first_token(llm, random_prompt(vocab, min(1024, prefix_tokens), seed=2))  # warm-up
        colds, warms, cached = [], [], 0
        for i in range(repeats):
            llm.engine.blocks.reset_prefix_cache()
            turn = prefix + random_prompt(vocab, new_tokens, seed=10 + i)
            cold, _ = first_token(llm, turn)  # fills the cache with this turn's blocks
            nxt = prefix + random_prompt(vocab, new_tokens, seed=100 + i)  # the next turn
            warm, cached = first_token(llm, nxt)
            colds.append(cold)
            warms.append(warm)
            report(f"  run {i + 1}/{repeats}: cold {cold:.1f} ms, cached {warm:.1f} ms")
        name = torch.cuda.get_device_name(llm.device) if llm.device.type == "cuda" else "cpu"
        name += f" x{tp}" if tp > 1 else ""
        llm.close()
        return AgentReport(
            name,
            llm.config.num_hidden_layers,
            prefix_tokens,
            new_tokens,
            statistics.median(colds),
            statistics.median(warms),
            cached,
            repeats,
        )
