"""MiniMax-M2's architecture config, read from a checkpoint's config.json and validated.

Reads both published forms (`rotary_dim` + `rope_theta`, and transformers 5's
`rope_parameters`) and says plainly what the engine does not support. No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2agent.engine.errors import ConfigError
from m2agent.engine.jsonfile import read_json_object

SUPPORTED_ARCHITECTURES = ("MiniMaxM2ForCausalLM",)


@dataclass(frozen=True, slots=True)
class FP8Config:
    """Block-quantized FP8 weights: value = fp8 x scale_inv of its (rows x cols) block."""

    block_rows: int = 128
    block_cols: int = 128
    modules_to_not_convert: tuple[str, ...] = ("gate", "e_score_correction_bias", "lm_head")


@dataclass(frozen=True, slots=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int  # I: one expert's hidden width
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rotary_dim: int  # leading dims of each head that rotate (NeoX halves)
    rope_theta: float
    rms_norm_eps: float
    num_experts: int
    num_experts_per_tok: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    num_mtp_modules: int = 0  # MTP layers the checkpoint may hold after the decoder layers
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    torch_dtype: str = "bfloat16"
    fp8: FP8Config | None = None

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def fp8_for(self, module: str) -> FP8Config | None:
        """FP8 settings for a module (e.g. "self_attn.q_proj"), None if it stays unquantized."""
        if self.fp8 is None or any(skip in module for skip in self.fp8.modules_to_not_convert):
            return None
        return self.fp8


def load_model_config(path: str | Path) -> ModelConfig:
    """Read `config.json` from a checkpoint folder (or the file itself)."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{file}: no such file; a MiniMax-M2 checkpoint folder has a config.json")
    return model_config_from_dict(read_json_object(file, ConfigError), source=str(file))


def model_config_from_dict(raw: dict[str, Any], source: str = "config") -> ModelConfig:
    reader = _Reader(raw, source)
    architectures = raw.get("architectures") or []
    if raw.get("model_type") != "minimax_m2" and not set(architectures) & set(
        SUPPORTED_ARCHITECTURES
    ):
        raise ConfigError(
            f"{source}: model_type {raw.get('model_type')!r} / architectures {architectures} "
            "is not MiniMax-M2 (model_type 'minimax_m2', MiniMaxM2ForCausalLM)"
        )
    _reject_unsupported(raw, source)

    hidden = reader.int("hidden_size")
    heads = reader.int("num_attention_heads")
    head_dim = reader.int("head_dim", hidden // heads if heads else 0)
    rope = raw.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"{source}: rope_parameters must be an object")
    if rope.get("rope_type", "default") != "default" or raw.get("rope_scaling"):
        raise ConfigError(f"{source}: only plain RoPE is supported (no rope scaling)")
    if "rotary_dim" in raw:
        rotary_dim = reader.int("rotary_dim")
    else:
        factor = rope.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))
        if not isinstance(factor, int | float) or not 0 < factor <= 1:
            raise ConfigError(f"{source}: partial_rotary_factor must be in (0, 1], got {factor!r}")
        rotary_dim = int(head_dim * factor)
    theta = raw.get("rope_theta", rope.get("rope_theta", 5_000_000.0))
    if not isinstance(theta, int | float) or theta <= 0:
        raise ConfigError(f"{source}: rope_theta must be a positive number, got {theta!r}")

    num_mtp = 0
    if raw.get("use_mtp"):
        num_mtp = reader.int("num_mtp_modules", 1)
    eos = raw.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    if not all(isinstance(i, int) for i in eos_ids):
        raise ConfigError(f"{source}: eos_token_id must be an integer or a list of integers")

    config = ModelConfig(
        vocab_size=reader.int("vocab_size"),
        hidden_size=hidden,
        intermediate_size=reader.int("intermediate_size"),
        num_hidden_layers=reader.int("num_hidden_layers"),
        num_attention_heads=heads,
        num_key_value_heads=reader.int("num_key_value_heads", heads),
        head_dim=head_dim,
        rotary_dim=rotary_dim,
        rope_theta=float(theta),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        num_experts=reader.int("num_local_experts"),
        num_experts_per_tok=reader.int("num_experts_per_tok"),
        max_position_embeddings=reader.int("max_position_embeddings", 196_608),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        num_mtp_modules=num_mtp,
        bos_token_id=raw.get("bos_token_id"),
        eos_token_ids=eos_ids,
        torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
        fp8=_fp8_config(raw.get("quantization_config"), source),
    )
    _validate(config, source)
    return config


class _Reader:
    def __init__(self, raw: dict[str, Any], source: str) -> None:
        self.raw, self.source = raw, source

    def int(self, key: str, default: int | None = None) -> int:
        value = self.raw.get(key, default)
        if value is None:
            raise ConfigError(f"{self.source}: missing required field {key!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{self.source}: {key} must be a positive integer, got {value!r}")
        return value


def _reject_unsupported(raw: dict[str, Any], source: str) -> None:
    if raw.get("scoring_func", "sigmoid") != "sigmoid":
        raise ConfigError(f"{source}: scoring_func {raw['scoring_func']!r} is not supported")
    if raw.get("shared_intermediate_size", 0):
        raise ConfigError(f"{source}: shared experts are not supported (MiniMax-M2 has none)")
    if raw.get("use_qk_norm") is False or raw.get("qk_norm_type", "per_layer") != "per_layer":
        raise ConfigError(f"{source}: only per-layer full-width QK-norm is supported")
    attn_types = raw.get("attn_type_list")
    if attn_types and any(t != 1 for t in attn_types):
        raise ConfigError(
            f"{source}: attn_type_list has linear-attention layers (MiniMax-Text-01 style); "
            "only full attention (type 1) is supported"
        )
    if raw.get("sliding_window"):
        raise ConfigError(f"{source}: sliding-window attention is not supported")


def _fp8_config(quant: Any, source: str) -> FP8Config | None:
    if quant is None:
        return None
    if not isinstance(quant, dict):
        raise ConfigError(f"{source}: quantization_config must be an object")
    method = quant.get("quant_method")
    if method != "fp8":
        raise ConfigError(
            f"{source}: quantization method {method!r} is not supported; "
            "use the bf16 or the FP8 (block-quantized) checkpoint"
        )
    fmt = quant.get("fmt", "float8_e4m3fn")
    if fmt not in ("float8_e4m3fn", "e4m3"):
        raise ConfigError(f"{source}: FP8 format {fmt!r} is not supported (float8_e4m3fn only)")
    if quant.get("activation_scheme", "dynamic") != "dynamic":
        raise ConfigError(f"{source}: only dynamic FP8 activation scaling is supported")
    block = quant.get("weight_block_size")
    if (
        not isinstance(block, list)
        or len(block) != 2
        or not all(isinstance(b, int) and b > 0 for b in block)
    ):
        raise ConfigError(
            f"{source}: FP8 needs weight_block_size [rows, cols] (per-tensor FP8 is not supported)"
        )
    skip = quant.get("modules_to_not_convert") or ["gate", "e_score_correction_bias", "lm_head"]
    return FP8Config(block[0], block[1], tuple(skip))


def _validate(c: ModelConfig, source: str) -> None:
    problems = []
    if c.num_attention_heads % c.num_key_value_heads:
        problems.append("num_attention_heads must be a multiple of num_key_value_heads")
    if c.rotary_dim % 2 or c.rotary_dim > c.head_dim:
        problems.append(f"rotary_dim {c.rotary_dim} must be even and at most head_dim")
    if c.num_experts_per_tok > c.num_experts:
        problems.append("num_experts_per_tok exceeds num_local_experts")
    if not math.isfinite(c.rms_norm_eps) or c.rms_norm_eps <= 0:
        problems.append("rms_norm_eps must be positive")
    if c.torch_dtype not in ("bfloat16", "float16", "float32"):
        problems.append(f"torch_dtype {c.torch_dtype!r} is not bfloat16, float16 or float32")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
