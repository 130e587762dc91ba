"""Find a checkpoint's safetensors files and stream its tensors one at a time.

Tensors are read lazily, so loading never holds the whole checkpoint in memory next to the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from m2agent.engine.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from its index when there is one."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: unreadable index ({e!r})") from e
        files = [folder / name for name in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists shards that are missing: {', '.join(missing)}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors files (and no {INDEX_FILE})")
    return files


def iter_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """(name, tensor on CPU, file) for every tensor of the checkpoint, one at a time."""
    for file in shard_files(folder):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    yield name, handle.get_tensor(name), file
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
