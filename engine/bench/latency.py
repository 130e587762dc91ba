"""`m2agent bench latency`: batch-1 time to first token and decode tok/s of our engine and of
transformers' MiniMaxM2ForCausalLM on the same weights, beside the bandwidth floor.

Full width, reduced depth: the published config with fewer layers, bf16 dummy weights (or a
real checkpoint). Random routing is near uniform: right for speed, meaningless for quality.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from m2agent.engine.bench.roofline import decode_bytes_per_token, measure_copy_bandwidth
from m2agent.engine.errors import ConfigError
from m2agent.engine.llm import LLM
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.sampling import SamplingParams

Report = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Timing:
    name: str
    ttft_ms: float  # prefill of the prompt + the first token
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def table(self) -> str:
        lines = [
            f"device: {self.device}; {self.layers} layers, prompt {self.prompt_tokens}, "
            f"{self.new_tokens} new tokens, batch 1",
            f"{'':28} {'TTFT ms':>10} {'decode tok/s':>14}",
        ]
        for t in self.timings:
            spread = f"{min(t.decode_tok_s_runs):.1f}-{max(t.decode_tok_s_runs):.1f}"
            lines.append(f"{t.name:28} {t.ttft_ms:10.1f} {t.decode_tok_s:14.1f}   (runs {spread})")
        lines.append(
            f"{'bandwidth bound':28} {'':>10} {self.bound_tok_s:14.1f}   "
            f"({self.bytes_per_token / 1e9:.2f} GB/token at {self.copy_bandwidth_gb_s:.0f} GB/s)"
        )
        return "\n".join(lines)


BUILTIN_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def resolve_config(value: str) -> Path:
    """A config.json path, or the name of a config shipped with m2agent ("minimax-m2")."""
    path = Path(value)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / f"{value}.json"
    if builtin.is_file():
        return builtin
    names = ", ".join(sorted(p.stem for p in BUILTIN_CONFIGS.glob("*.json")))
    raise ConfigError(f"{value}: no such config file, and not a built-in config ({names})")


def reduced_config(config_file: Path, layers: int, folder: Path) -> Path:
    """Write config.json: the given config at `layers` layers, bf16 (no quantization)."""
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_file}: cannot read a JSON config ({e})") from e
    raw["num_hidden_layers"] = layers
    if isinstance(raw.get("attn_type_list"), list):
        raw["attn_type_list"] = raw["attn_type_list"][:layers]
    raw.pop("quantization_config", None)
    raw["use_mtp"] = False
    (folder / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    return folder


def time_engine(
    llm: LLM, prompt: list[int], new_tokens: int, repeats: int, report: Report
) -> Timing:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    warm_up = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    list(llm.stream_tokens(prompt, warm_up))  # kernels chosen for this prompt length
    ttfts, rates = [], []
    for i in range(repeats):
        _sync(llm.device)
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
        report(f"  m2agent engine run {i + 1}/{repeats}: {ttfts[-1]:.1f} ms, {rates[-1]:.1f} tok/s")
    return Timing(
        "m2agent engine", statistics.median(ttfts), statistics.median(rates), repeats, rates
    )


def transformers_weights(model: MiniMaxM2ForCausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """Our parameters under transformers' internal names (fused gate_up experts)."""
    for name, param in model.named_parameters():
        if ".experts." in name:
            continue
        name = name.replace(".block_sparse_moe.", ".mlp.")
        yield name, param.data
    for i, layer in enumerate(model.model.layers):
        experts = layer.block_sparse_moe.experts
        prefix = f"model.layers.{i}.mlp.experts"
        yield f"{prefix}.gate_up_proj", torch.cat([experts.dense("w1"), experts.dense("w3")], 1)
        yield f"{prefix}.down_proj", experts.dense("w2")


def build_transformers_model(llm: LLM, config_folder: Path, experts_impl: str) -> Any:
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(config_folder))
    with torch.device(llm.device):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=llm.dtype, experts_implementation=experts_impl
        )
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in transformers_weights(llm.model):
            state[name].copy_(tensor)
    return model.eval()


def time_transformers(
    model: Any, prompt: list[int], new_tokens: int, repeats: int, name: str, report: Report
) -> Timing:
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)

    def run(n: int) -> float:
        _sync(device)
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        _sync(device)
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
    report: Report = print,
) -> LatencyReport:
    with tempfile.TemporaryDirectory(prefix="m2agent-bench-") as tmp:
        if dummy_config is not None:
            folder = reduced_config(dummy_config, layers, Path(tmp))
            report(f"building a {layers}-layer model with dummy bf16 weights on {device} ...")
            llm = LLM(folder, device=device, dtype="bfloat16", load_format="dummy")
        elif model_path is not None:
            report(f"loading {model_path} on {device} ...")
            llm = LLM(model_path, device=device, dtype="bfloat16")
            # transformers gets the same architecture, unquantized: it receives our weights.
            layers = llm.config.num_hidden_layers
            folder = reduced_config(model_path / "config.json", layers, Path(tmp))
        else:
            raise ConfigError("pass --model PATH or --dummy-config CONFIG.json")
        generator = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, llm.config.vocab_size, (prompt_tokens,), generator=generator)
        prompt_ids = prompt.tolist()
        report("timing the m2agent engine ...")
        timings = [time_engine(llm, prompt_ids, new_tokens, repeats, report)]
        if baseline:
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
        per_token = decode_bytes_per_token(llm.config, weight_bytes=2, context_tokens=context)
        name = torch.cuda.get_device_name(llm.device) if llm.device.type == "cuda" else "cpu"
        return LatencyReport(
            device=name,
            layers=llm.config.num_hidden_layers,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            bytes_per_token=per_token,
            copy_bandwidth_gb_s=bandwidth / 1e9,
            bound_tok_s=bandwidth / per_token,
            timings=timings,
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
