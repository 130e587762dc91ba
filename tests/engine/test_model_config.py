"""config.json in both published forms, and clear errors for what is not supported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from m2agent.engine.bench.common import BUILTIN_CONFIGS
from m2agent.engine.errors import ConfigError
from m2agent.engine.model_config import load_model_config, model_config_from_dict

SHARED = BUILTIN_CONFIGS / "minimax-m2.json"

PUBLISHED: dict[str, Any] = {
    "architectures": ["MiniMaxM2ForCausalLM"],
    "model_type": "minimax_m2",
    "hidden_size": 3072,
    "intermediate_size": 1536,
    "num_hidden_layers": 62,
    "num_attention_heads": 48,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 196608,
    "rms_norm_eps": 1e-06,
    "rope_theta": 5000000,
    "rotary_dim": 64,
    "num_local_experts": 256,
    "num_experts_per_tok": 8,
    "vocab_size": 200064,
    "eos_token_id": 200020,
    "use_mtp": True,
    "num_mtp_modules": 3,
    "quantization_config": {
        "quant_method": "fp8",
        "fmt": "float8_e4m3fn",
        "activation_scheme": "dynamic",
        "weight_block_size": [128, 128],
        "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
    },
}


def test_published_form() -> None:
    config = model_config_from_dict(PUBLISHED)
    assert (config.rotary_dim, config.rope_theta, config.head_dim) == (64, 5e6, 128)
    assert (config.q_size, config.kv_size) == (6144, 1024)
    assert config.num_mtp_modules == 3
    assert config.eos_token_ids == (200020,)
    assert config.fp8 is not None and (config.fp8.block_rows, config.fp8.block_cols) == (128, 128)
    assert config.fp8_for("self_attn.q_proj") is config.fp8
    assert config.fp8_for("block_sparse_moe.gate") is None


def test_transformers5_form_is_the_same_model() -> None:
    raw = dict(PUBLISHED)
    del raw["rotary_dim"], raw["rope_theta"]
    raw["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "partial_rotary_factor": 0.5,
    }
    assert model_config_from_dict(raw) == model_config_from_dict(PUBLISHED)


def test_shared_full_size_config_loads() -> None:
    config = load_model_config(SHARED)
    assert config.num_hidden_layers == 62 and config.num_experts == 256


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "is not MiniMax-M2"),
        ({"scoring_func": "softmax"}, "scoring_func"),
        ({"shared_intermediate_size": 512}, "shared experts"),
        ({"attn_type_list": [0, 1]}, "linear-attention"),
        ({"quantization_config": {"quant_method": "awq"}}, "quantization method 'awq'"),
        ({"quantization_config": {"quant_method": "fp8", "fmt": "e5m2"}}, "FP8 format"),
        ({"quantization_config": {"quant_method": "fp8"}}, "weight_block_size"),
        ({"hidden_size": -3}, "hidden_size must be a positive integer"),
        ({"num_key_value_heads": 7}, "multiple of num_key_value_heads"),
        ({"rotary_dim": 129}, "rotary_dim"),
        ({"num_experts_per_tok": 300}, "exceeds num_local_experts"),
        ({"vocab_size": None}, "missing required field 'vocab_size'"),
    ],
)
def test_unsupported_or_invalid_configs_explain_themselves(change: dict, message: str) -> None:
    raw = {**PUBLISHED, **change}
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict(raw, source="config.json")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_model_config(tmp_path)
