"""Bandwidth floor of batch-1 decode: bytes a decode step must read, and the device's measured
copy bandwidth. Their ratio is the tok/s no implementation can beat."""

from __future__ import annotations

import time

import torch

from m2agent.engine.model_config import ModelConfig


def decode_bytes_per_token(config: ModelConfig, weight_bytes: float, context_tokens: int) -> int:
    """Bytes read per decoded token at batch 1: attention and the top-k experts' weights of every
    layer, the fp32 router, norms, the LM head, one embedding row, and the KV of the context."""
    c = config
    attention = 2 * c.hidden_size * c.q_size + 2 * c.hidden_size * c.kv_size
    experts = c.num_experts_per_tok * 3 * c.hidden_size * c.intermediate_size
    per_layer = (attention + experts) * weight_bytes
    per_layer += (c.num_experts * c.hidden_size + c.num_experts) * 4  # router, fp32
    per_layer += (2 * c.hidden_size + c.q_size + c.kv_size) * 2  # norms, bf16
    kv = 2 * c.kv_size * 2 * context_tokens  # bf16 keys + values of each layer
    head = c.vocab_size * c.hidden_size * 2 + c.hidden_size * 2
    return int(c.num_hidden_layers * (per_layer + kv) + head)


def measure_copy_bandwidth(
    device: torch.device, size_bytes: int = 1 << 30, iters: int = 20
) -> float:
    """Bytes per second of a device-to-device copy (read + write counted), the practical peak."""
    src = torch.empty(size_bytes // 2, dtype=torch.bfloat16, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm up
    _sync(device)
    started = time.perf_counter()
    for _ in range(iters):
        dst.copy_(src)
    _sync(device)
    elapsed = time.perf_counter() - started
    return 2 * size_bytes * iters / elapsed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
