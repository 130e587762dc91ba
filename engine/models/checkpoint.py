"""Find a checkpoint's safetensors files and hand out their tensors one at a time, unread.

Each tensor is a `StoredTensor`: its shape is known from the header, and a loader reads either
all of it or only the slice its rank holds (`safe_open(...).get_slice`). So a rank reads only its
slices, and loading never holds the whole checkpoint (or a whole tensor it drops) in memory.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from m2agent.engine.errors import CheckpointError
from m2agent.engine.models.load_progress import LoadProgress

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


class StoredTensor:
    """One tensor of an open safetensors file. Valid only until the iteration that produced it
    moves on (the file closes); every read is counted in `progress`."""

    def __init__(self, handle: Any, name: str, file: Path, progress: LoadProgress | None) -> None:
        self._handle, self._name, self._file, self._progress = handle, name, file, progress
        try:
            self._stored = handle.get_slice(name)  # reads the header only
            self.shape: tuple[int, ...] = tuple(self._stored.get_shape())
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: {name}: unreadable ({e})") from e

    def read(self) -> torch.Tensor:
        """The whole tensor, on the CPU."""
        return self._counted(lambda: self._handle.get_tensor(self._name))

    def read_slice(self, dim: int, start: int, length: int) -> torch.Tensor:
        """`length` entries from `start` along `dim` (only those bytes are read)."""
        index = tuple(
            slice(start, start + length) if d == dim else slice(None)
            for d in range(len(self.shape))
        )
        return self._counted(lambda: self._stored[index])

    def _counted(self, read: Callable[[], torch.Tensor]) -> torch.Tensor:
        try:
            tensor = read()
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self._file}: {self._name}: unreadable ({e})") from e
        if self._progress is not None:
            self._progress.add_bytes(tensor.numel() * tensor.element_size())
        return tensor


def iter_tensors(
    folder: Path, progress: LoadProgress | None = None
) -> Iterator[tuple[str, StoredTensor, Path]]:
    """(name, unread tensor, file) for every tensor of the checkpoint, one at a time."""
    for file in shard_files(folder):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    yield name, StoredTensor(handle, name, file, progress), file
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
        if progress is not None:
            progress.shard_done()


def new_progress(folder: Path, stream: Any) -> LoadProgress:
    """A progress counter over `folder`'s shards, shown on `stream` (None: count only)."""
    files = shard_files(folder)
    return LoadProgress(len(files), sum(f.stat().st_size for f in files), stream)
