"""What the benchmarks share: the model under test (dummy full-width reduced-depth, or a real
checkpoint), random prompts, transformers' model on the same weights, device sync."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from m2agent.engine.errors import ConfigError
from m2agent.engine.layers.linear import Linear
from m2agent.engine.llm import LLM
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM

Report = Callable[[str], None]

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


# What M2 publishes; used when --quant fp8 meets a config without quantization_config.
DEFAULT_FP8 = {
    "quant_method": "fp8",
    "fmt": "float8_e4m3fn",
    "activation_scheme": "dynamic",
    "weight_block_size": [128, 128],
    "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
}


def reduced_config(config_file: Path, layers: int, folder: Path, quant: str = "auto") -> Path:
    """Write config.json: the given config at `layers` layers. `quant`: "auto" keeps the
    config's quantization_config (FP8 for M2), "fp8" makes the weights FP8 block-quantized,
    "bf16" drops the quantization."""
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config_file}: cannot read a JSON config ({e})") from e
    if quant not in ("auto", "fp8", "bf16"):
        raise ConfigError(f"quant must be auto, fp8 or bf16, got {quant!r}")
    raw["num_hidden_layers"] = layers
    if isinstance(raw.get("attn_type_list"), list):
        raw["attn_type_list"] = raw["attn_type_list"][:layers]
    if quant == "bf16":
        raw.pop("quantization_config", None)
    elif quant == "fp8" and not raw.get("quantization_config"):
        raw["quantization_config"] = DEFAULT_FP8
    raw["use_mtp"] = False
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw), encoding="utf-8")
    return folder


def open_model(
    model_path: Path | None,
    dummy_config: Path | None,
    layers: int,
    device: str,
    tmp: Path,
    report: Report,
    quant: str = "auto",
    **engine_options: Any,
) -> tuple[LLM, Path]:
    """The engine under test, and a folder with its unquantized config.json (for transformers,
    which receives our weights, dequantized when they are FP8)."""
    if dummy_config is not None:
        folder = reduced_config(dummy_config, layers, tmp / "engine", quant)
        llm = LLM(folder, device=device, dtype="bfloat16", load_format="dummy", **engine_options)
        kind = "FP8 (block-scaled)" if llm.config.fp8 else "bf16"
        report(f"built a {layers}-layer model with dummy {kind} weights on {device}")
        baseline = reduced_config(dummy_config, layers, tmp / "baseline", "bf16")
    elif model_path is not None:
        report(f"loading {model_path} on {device} ...")
        llm = LLM(model_path, device=device, dtype="bfloat16", **engine_options)
        layers = llm.config.num_hidden_layers
        baseline = reduced_config(model_path / "config.json", layers, tmp / "baseline", "bf16")
    else:
        raise ConfigError("pass --model PATH or --dummy-config CONFIG.json")
    if llm.engine.runner.warm_up_note:
        report(llm.engine.runner.warm_up_note)
    return llm, baseline


def random_prompt(vocab_size: int, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (length,), generator=generator).tolist()


def transformers_weights(model: MiniMaxM2ForCausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """Our parameters under transformers' internal names (fused gate_up experts); FP8 weights
    dequantized (a copy: the baseline is the bf16 model those weights stand for)."""
    linears = {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, Linear)}
    for name, param in model.named_parameters():
        if ".experts." in name or name.endswith("weight_scale_inv"):
            continue
        data = linears[name].dense_weight() if name in linears else param.data
        yield name.replace(".block_sparse_moe.", ".mlp."), data
    for i, layer in enumerate(model.model.layers):
        experts = layer.block_sparse_moe.experts
        prefix = f"model.layers.{i}.mlp.experts"
        yield f"{prefix}.gate_up_proj", experts.dense("w13")  # same layout: shared, not copied
        yield f"{prefix}.down_proj", experts.dense("w2")


def build_transformers_model(llm: LLM, config_folder: Path, experts_impl: str) -> Any:
    """transformers' MiniMaxM2ForCausalLM whose parameters *are* our model's tensors (built on
    the meta device, then given our tensors), so the baseline costs no second copy of the
    weights. Its router then runs in fp32 like ours."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(config_folder))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(
            config, dtype=llm.dtype, experts_implementation=experts_impl
        )
    model.load_state_dict(dict(transformers_weights(llm.model)), strict=True, assign=True)
    with torch.device(llm.device):  # buffers computed at construction, not in the state dict
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)
    still_meta = [
        name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta
    ]
    if still_meta:
        raise RuntimeError(f"transformers baseline: tensors left unset: {still_meta[:5]}")
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
