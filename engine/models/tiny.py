"""Tiny random MiniMax-M2 checkpoints in the published layout, for tests and smoke runs.

Writes config.json (published `rotary_dim` form), generation_config.json, sharded safetensors
with an index, and a small byte-level BPE tokenizer trained here with M2's markers as added
tokens. bf16/fp32 or FP8 block-quantized (then every quantized dim must be a multiple of 128).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from m2agent.engine.model_config import model_config_from_dict
from m2agent.engine.models.checkpoint import INDEX_FILE
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.models.weights import init_dummy_weights

SPECIAL_TOKENS = ("]~!b[", "]~b]", "[e~[")
ADDED_TOKENS = ("<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>")
# GPT-4o-style pre-tokenization split.
SPLIT_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog. It's 2026; we'll fix the test.",
    'import json\nprint(json.dumps({"key": [1, 2, 3]}, indent=2))\n',
    "Fix the failing test in tests/test_calc.py and run pytest -q again.",
    "我们修复这个错误。数据很重要。東京 and 北京, emoji 😀🚀 and accents: café, naïve.",
    "<think>\nLet me read the file first.\n</think>\n\nReading it now.",
    '<invoke name="Read">\n<parameter name="file_path">src/app.py</parameter>\n</invoke>',
]


@dataclass(frozen=True, slots=True)
class TinySpec:
    num_layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    rotary_dim: int = 8
    experts: int = 8
    top_k: int = 2
    intermediate: int = 32
    vocab: int = 512
    # The agent's first prompt (system prompt + tool schemas) is ~5,400 tokens with the tiny
    # byte-level tokenizer: the window holds it and a full answer.
    max_positions: int = 32768


FP8_SPEC = TinySpec(hidden=256, heads=2, kv_heads=1, head_dim=128, rotary_dim=64, intermediate=128)


def build_tokenizer(vocab_size: int = 400) -> HFTokenizer:
    """A byte-level BPE trained on a few lines, with M2's markers as added tokens after the
    ordinary ones (special: the turn markers; not special: think and tool-call tags)."""
    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return tokenizer


def write_tokenizer(folder: Path, vocab_size: int = 400) -> HFTokenizer:
    """tokenizer.json + tokenizer_config.json for a tiny checkpoint folder."""
    tokenizer = build_tokenizer(vocab_size)
    tokenizer.save(str(folder / "tokenizer.json"))
    decoder = {
        str(i): {"content": t.content, "special": t.special}
        for i, t in tokenizer.get_added_tokens_decoder().items()
    }
    _write_json(
        folder / "tokenizer_config.json",
        {
            "bos_token": "]~!b[",
            "eos_token": "[e~[",
            "added_tokens_decoder": decoder,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    return tokenizer


def tiny_config(spec: TinySpec, tokenizer: HFTokenizer, *, fp8: bool) -> dict[str, Any]:
    """A config.json in the published form (`rotary_dim` + `rope_theta`)."""
    config: dict[str, Any] = {
        "architectures": ["MiniMaxM2ForCausalLM"],
        "model_type": "minimax_m2",
        "attn_type_list": [1] * spec.num_layers,
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": 5_000_000,
        "rotary_dim": spec.rotary_dim,
        "num_local_experts": spec.experts,
        "num_experts_per_tok": spec.top_k,
        "scoring_func": "sigmoid",
        "use_routing_bias": True,
        "shared_intermediate_size": 0,
        "use_qk_norm": True,
        "qk_norm_type": "per_layer",
        "use_mtp": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": spec.vocab,
        "bos_token_id": tokenizer.token_to_id("]~!b["),
        "eos_token_id": tokenizer.token_to_id("[e~["),
    }
    if fp8:
        config["quantization_config"] = {
            "quant_method": "fp8",
            "fmt": "float8_e4m3fn",
            "activation_scheme": "dynamic",
            "weight_block_size": [128, 128],
            "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
        }
    return config


def hub_tensors(model: MiniMaxM2ForCausalLM) -> dict[str, torch.Tensor]:
    """The model's weights under the published checkpoint names (experts unstacked)."""
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if ".experts." in name:
            prefix, leaf = name.rsplit(".", 1)  # leaf: w13_weight, w2_weight_scale_inv, ...
            matrix, suffix = leaf.split("_", 1)
            for e in range(param.shape[0]):
                if matrix == "w13":  # unfuse: gate rows first, then up
                    gate, up = param.data[e].chunk(2, dim=0)
                    out[f"{prefix}.{e}.w1.{suffix}"] = gate.contiguous()
                    out[f"{prefix}.{e}.w3.{suffix}"] = up.contiguous()
                else:
                    out[f"{prefix}.{e}.{matrix}.{suffix}"] = param.data[e].contiguous()
        else:
            out[name] = param.data.contiguous()
    return out


def write_tiny_checkpoint(
    folder: str | Path,
    spec: TinySpec | None = None,
    *,
    fp8: bool = False,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    num_shards: int = 2,
) -> Path:
    """Write a random tiny M2 checkpoint to `folder` (created) and return it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = spec or (FP8_SPEC if fp8 else TinySpec())
    tokenizer = write_tokenizer(folder)
    config = tiny_config(spec, tokenizer, fp8=fp8)
    model = MiniMaxM2ForCausalLM(model_config_from_dict(config), dtype)
    init_dummy_weights(model, seed=seed, std=0.2)
    _perturb_norms_and_bias(model, seed)
    _write_json(folder / "config.json", config)
    _write_json(
        folder / "generation_config.json",
        {"temperature": 1.0, "top_p": 0.95, "top_k": 40, "eos_token_id": config["eos_token_id"]},
    )
    _save_sharded(folder, hub_tensors(model), num_shards)
    return folder


@torch.no_grad()
def _perturb_norms_and_bias(model: MiniMaxM2ForCausalLM, seed: int) -> None:
    """Non-trivial norm weights and routing bias, so tests notice if either is misapplied."""
    generator = torch.Generator().manual_seed(seed + 1)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight") or name.endswith("e_score_correction_bias"):
            noise = torch.randn(param.shape, generator=generator) * 0.3
            param.add_(noise.to(param.dtype))


def _save_sharded(folder: Path, tensors: dict[str, torch.Tensor], num_shards: int) -> None:
    names = sorted(tensors)
    shard_names = [f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors" for i in range(num_shards)]
    weight_map = {}
    for i, shard in enumerate(shard_names):
        part = {n: tensors[n] for n in names[i::num_shards]}
        save_file(part, str(folder / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(folder / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})


def _write_json(file: Path, data: dict[str, Any]) -> None:
    """Atomic write: a temp file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
    os.replace(tmp, file)
