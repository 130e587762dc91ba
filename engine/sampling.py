"""Sampling parameters: frozen, validated; unset fields come from the checkpoint's
generation_config.json, else MiniMax's published defaults (temperature 1.0, top_p 0.95, top_k 40).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from m2agent.engine.errors import ConfigError
from m2agent.engine.jsonfile import read_json_object

MINIMAX_DEFAULTS = {"temperature": 1.0, "top_p": 0.95, "top_k": 40}
MIN_TEMPERATURE = 1e-5  # below this (and above 0) logits / temperature overflows fp32
MIN_TOP_P = 1e-5  # below this top_p rounds to 0 in fp32 and no token survives
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes unsigned 64-bit seeds
RESPONSE_FORMATS = ("text", "json_object")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to pick each next token and when to stop.

    temperature 0 is greedy. top_k 0 (or -1) and top_p 1 and min_p 0 switch those filters off.
    None means "the model's default" (see `resolve`).
    """

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float = 0.0
    seed: int | None = None
    max_tokens: int = 256
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    # "json_object": after the reasoning, exactly one JSON object (constrained decoding;
    # the request ends where the object closes). See `json_mode.py`.
    response_format: str = "text"

    def __post_init__(self) -> None:
        problems = []
        if not _is_sequence_of(self.stop, str):
            problems.append("stop must be a list of strings")
        if not _is_sequence_of(self.stop_token_ids, int):
            problems.append("stop_token_ids must be a list of integers")
        t = self.temperature
        if t is not None and (not math.isfinite(t) or t < 0 or 0 < t < MIN_TEMPERATURE):
            problems.append(
                f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got {t}"
            )
        if self.top_p is not None and not MIN_TOP_P <= self.top_p <= 1:
            problems.append(f"top_p must be in [{MIN_TOP_P}, 1], got {self.top_p}")
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not 0 <= self.seed <= MAX_SEED
        ):
            problems.append(f"seed must be an integer in [0, 2**64 - 1], got {self.seed}")
        if self.top_k is not None and (self.top_k < -1 or isinstance(self.top_k, bool)):
            problems.append(f"top_k must be -1, 0 (off) or positive, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            problems.append(f"min_p must be in [0, 1], got {self.min_p}")
        if self.max_tokens < 1:
            problems.append(f"max_tokens must be at least 1, got {self.max_tokens}")
        if any(s == "" for s in self.stop):
            problems.append("stop strings must not be empty")
        if self.response_format not in RESPONSE_FORMATS:
            problems.append(
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                f"got {self.response_format!r}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0

    def resolve(self, defaults: dict[str, Any]) -> SamplingParams:
        """A copy with every None filled from `defaults` (see `load_generation_defaults`)."""
        return replace(
            self,
            temperature=defaults["temperature"] if self.temperature is None else self.temperature,
            top_p=defaults["top_p"] if self.top_p is None else self.top_p,
            top_k=defaults["top_k"] if self.top_k is None else self.top_k,
        )


def _is_sequence_of(value: Any, kind: type) -> bool:
    return isinstance(value, tuple | list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    )


def load_generation_defaults(folder: str | Path) -> dict[str, Any]:
    """temperature/top_p/top_k (and eos ids) from generation_config.json over MiniMax's values."""
    defaults: dict[str, Any] = dict(MINIMAX_DEFAULTS)
    file = Path(folder) / "generation_config.json"
    if not file.is_file():
        return defaults
    data = read_json_object(file, ConfigError)
    if data.get("do_sample") is False:
        defaults["temperature"] = 0.0
    for key in ("temperature", "top_p", "top_k"):
        if isinstance(data.get(key), int | float) and not isinstance(data.get(key), bool):
            defaults[key] = data[key]
    eos = data.get("eos_token_id")
    if isinstance(eos, int):
        defaults["eos_token_ids"] = (eos,)
    elif isinstance(eos, list) and all(isinstance(i, int) for i in eos):
        defaults["eos_token_ids"] = tuple(eos)
    try:
        SamplingParams(temperature=defaults["temperature"], top_p=defaults["top_p"])
    except ValueError as e:
        raise ConfigError(f"{file}: {e}") from e
    return defaults
