"""Finding MiniMax-M2 weights where users keep them and the GPUs to serve them on, so that with
no endpoint configured the embedded engine is the default where it can serve.

Weights: the Hugging Face cache snapshot of `MiniMaxAI/MiniMax-M2` (the revision `refs/main`
names, else the newest snapshot) in the hub cache that `settings.hf_hub_cache` resolves
(HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub). GPUs: `nvidia-smi` (no torch import in
the agent). The tensor-parallel size is the smallest power of two whose share of the weights
fits in one GPU with room for the KV cache. No I/O beyond reading the cache folder and asking
nvidia-smi."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO_ID = "MiniMaxAI/MiniMax-M2"
WEIGHTS_SHARE = 0.80  # of a GPU's memory for weights; the rest is KV cache and activations
CPU_LIMIT_BYTES = 2 << 30  # without GPUs, only test-sized checkpoints are served (on CPU)


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Plan:
    """How to serve found weights: a tensor-parallel size and a device, or why not."""

    weights: Path
    weight_bytes: int
    tp: int | None  # None: cannot serve here (`why` says why)
    device: str | None
    why: str


def hub_snapshot(hub_cache: Path, repo_id: str = REPO_ID) -> Path | None:
    """The cached snapshot folder of `repo_id` holding a config.json, or None."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        named = snapshots / ref.read_text(encoding="utf-8").strip()
        if (named / "config.json").is_file():
            return named
    found = [s for s in snapshots.iterdir() if (s / "config.json").is_file()]
    return max(found, key=lambda s: s.stat().st_mtime) if found else None


def weight_bytes(folder: Path) -> int:
    """Bytes of the checkpoint's safetensors shards (the cache links them to blobs)."""
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def visible_gpus() -> list[Gpu]:
    """The NVIDIA GPUs this process can use (CUDA_VISIBLE_DEVICES is honoured by nvidia-smi's
    caller only; the engine applies it when it starts)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        done = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        name, _, mib = line.rpartition(",")
        if mib.strip().isdigit():
            gpus.append(Gpu(name.strip(), int(mib) << 20))
    return gpus


def plan(weights: Path, size: int, gpus: list[Gpu], tp: int | None = None) -> Plan:
    """The split the weights need on these GPUs (pure). `tp`: the user's choice, kept."""
    if not gpus:
        if size <= CPU_LIMIT_BYTES:
            return Plan(weights, size, tp or 1, "cpu", "no GPU: a test-sized checkpoint on CPU")
        return Plan(weights, size, None, None, f"no GPU here for {size / 2**30:.0f} GiB of weights")
    per_gpu = min(g.memory_bytes for g in gpus)
    if tp is not None:
        return Plan(weights, size, tp, None, f"--tp {tp} as configured")
    split = 1
    while split <= len(gpus):
        if size / split <= WEIGHTS_SHARE * per_gpu:
            return Plan(weights, size, split, None, f"{size / 2**30:.0f} GiB over {split} GPUs")
        split *= 2
    return Plan(
        weights, size, None, None,
        f"{size / 2**30:.0f} GiB of weights do not fit on {len(gpus)} GPU(s) of "
        f"{per_gpu / 2**30:.0f} GiB",
    )  # fmt: skip
