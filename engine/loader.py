"""Build a model on its device from a checkpoint folder (or dummy weights from a config), with
its tokenizer and generation defaults."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m2agent.engine.errors import EngineError
from m2agent.engine.layers.parallel import SINGLE, TensorParallel
from m2agent.engine.model_config import ModelConfig, load_model_config
from m2agent.engine.models.checkpoint import iter_tensors, new_progress
from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM
from m2agent.engine.models.weights import init_dummy_weights, load_weights
from m2agent.engine.sampling import load_generation_defaults
from m2agent.engine.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True, slots=True)
class LoadedModel:
    config: ModelConfig
    model: MiniMaxM2ForCausalLM
    tokenizer: Tokenizer | None
    generation_defaults: dict[str, Any]
    eos_token_ids: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    name: str  # the folder's name, for /v1/models


def load_model(
    path: Path,
    device: str,
    dtype: str | torch.dtype,
    load_format: str,
    seed: int = 0,
    tp: TensorParallel = SINGLE,
    show_progress: bool = False,
) -> LoadedModel:
    """The model (this rank's slice of it under tensor or expert parallelism) on `device`.
    Dummy weights are generated on the device itself. A checkpoint rank reads only its slices;
    with `show_progress` and a terminal on stderr, a live line shows shards, GB and GB/s."""
    folder = path.parent if path.is_file() else path
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    config = load_model_config(path)
    tokenizer = Tokenizer.from_dir(folder) if Tokenizer.exists(folder) else None
    defaults = load_generation_defaults(folder)
    started = time.perf_counter()
    with torch.device(resolved_device):
        model = MiniMaxM2ForCausalLM(config, resolved_dtype, tp)
    stream = sys.stderr if show_progress and sys.stderr.isatty() else None
    if load_format == "dummy":
        rank_seed = seed + 1 + tp.rank if tp.size > 1 else None  # never `seed`'s own stream
        init_dummy_weights(model, seed=seed, rank_seed=rank_seed)
        done = f"generated dummy weights on {resolved_device}"
    elif load_format == "auto":
        if tokenizer is None:
            raise EngineError(f"{folder}: no tokenizer.json; a checkpoint needs its tokenizer")
        progress = new_progress(folder, stream)
        load_weights(model, iter_tensors(folder, progress), where=str(folder))
        done = progress.finish().describe()
    else:
        raise EngineError(f"load_format must be 'auto' or 'dummy', got {load_format!r}")
    model.eval()
    size_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    logger.info(
        "rank %d: %s; %.2f GB of weights in %.1f s",
        tp.rank,
        done,
        size_gb,
        time.perf_counter() - started,
    )
    eos: tuple[int, ...] = tuple(defaults.get("eos_token_ids") or config.eos_token_ids)
    if not eos and tokenizer is not None and tokenizer.eos_token_id is not None:
        eos = (tokenizer.eos_token_id,)
    return LoadedModel(
        config, model, tokenizer, defaults, eos, resolved_device, resolved_dtype, folder.name
    )


def resolve_device(device: str) -> torch.device:
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise EngineError(f"unknown device {device!r}: use 'cpu' or 'cuda'") from e
    if resolved.type not in ("cpu", "cuda"):
        raise EngineError(f"device {device!r} is not supported: use 'cpu' or 'cuda'")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError("device 'cuda' was asked for but CUDA is not available here")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise EngineError(f"dtype {dtype} is not supported: use float32 or bfloat16")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise EngineError(f"dtype {dtype!r} is not supported: use 'float32', 'bfloat16' or 'auto'")
    return _DTYPES[dtype]
