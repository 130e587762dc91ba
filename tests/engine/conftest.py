"""Tiny MiniMax-M2 checkpoints for engine tests: saved by transformers itself (the oracle),
and written by our own `models/tiny.py` (bf16 and FP8)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from m2agent.engine.engine import LLMEngine, RequestDelta
from m2agent.engine.models.tiny import write_tiny_checkpoint, write_tokenizer


@dataclass(frozen=True)
class Shape:
    id: str
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    head_dim: int = 16
    partial: float = 0.5
    experts: int = 6
    top_k: int = 3
    inter: int = 32
    seed: int = 0


SHAPES = [
    Shape("gqa2-e6-top3"),
    Shape("gqa3-e5-top4", hidden=48, heads=6, kv_heads=2, head_dim=8, experts=5, top_k=4, seed=1),
    Shape("mha-e8-top2-3layers", layers=3, heads=4, kv_heads=4, experts=8, top_k=2, seed=2),
]


def save_transformers_checkpoint(folder: Path, shape: Shape, published_form: bool) -> Path:
    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True)
    tokenizer = write_tokenizer(folder)
    config = transformers.MiniMaxM2Config(
        vocab_size=512,
        hidden_size=shape.hidden,
        intermediate_size=shape.inter,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        num_local_experts=shape.experts,
        num_experts_per_tok=shape.top_k,
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "partial_rotary_factor": shape.partial,
        },
        bos_token_id=tokenizer.token_to_id("]~!b["),
        eos_token_id=tokenizer.token_to_id("[e~["),
    )
    torch.manual_seed(shape.seed)
    model = transformers.MiniMaxM2ForCausalLM(config)
    with torch.no_grad():  # make norms and the routing bias matter
        for name, tensor in model.state_dict().items():
            if name.endswith("norm.weight") or name.endswith("e_score_correction_bias"):
                tensor.add_(torch.randn_like(tensor) * 0.3)
            elif "experts" in name or name.endswith("gate.weight"):
                tensor.mul_(10.0)
    model.save_pretrained(folder)
    if published_form:
        rewrite_config_published(folder / "config.json", shape)
    return folder


def rewrite_config_published(file: Path, shape: Shape) -> None:
    """The form MiniMax published: rotary_dim + rope_theta instead of rope_parameters."""
    raw: dict[str, Any] = json.loads(file.read_text())
    rope = raw.pop("rope_parameters")
    raw["rope_theta"] = rope["rope_theta"]
    raw["rotary_dim"] = int(shape.head_dim * shape.partial)
    raw.update(scoring_func="sigmoid", use_qk_norm=True, qk_norm_type="per_layer", use_mtp=False)
    file.write_text(json.dumps(raw, indent=2))


@pytest.fixture(scope="session")
def transformers_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """id -> folder for every shape, in both config forms ("<id>" and "<id>-published")."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for shape in SHAPES:
        out[shape.id] = save_transformers_checkpoint(root / shape.id, shape, False)
        out[f"{shape.id}-published"] = save_transformers_checkpoint(
            root / f"{shape.id}-published", shape, True
        )
    return out


@pytest.fixture(scope="session")
def tiny_m2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "bf16")


@pytest.fixture(scope="session")
def tiny_fp8_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "fp8", fp8=True)


def drive(engine: LLMEngine, script: dict[int, list]) -> dict[str, list[RequestDelta]]:
    """Step until idle; at step k, add the (id, prompt, params) requests of script[k] and
    abort the ids (plain strings) listed there. Checks the pool after every step, and that
    it is whole once idle. Returns each request's deltas."""
    deltas: dict[str, list[RequestDelta]] = {}
    step = 0
    while step <= max(script, default=0) or engine.has_unfinished_requests():
        for item in script.get(step, []):
            if isinstance(item, str):
                engine.abort(item)
            else:
                engine.add_request(*item)
        for delta in engine.step():
            deltas.setdefault(delta.request_id, []).append(delta)
        engine.blocks.check()
        step += 1
        assert step < 500, "the engine never went idle"
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    return deltas
