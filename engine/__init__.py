"""m2agent's inference engine for MiniMax-M2, and the model's wire format (`protocol`).

`from m2agent.engine import LLM, SamplingParams`. Importing this package stays cheap and
torch-free (`m2agent.engine.protocol` is on the CLI's start-up path): the public names load on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from m2agent.engine.errors import CheckpointError, ConfigError, EngineError
    from m2agent.engine.llm import LLM, RequestOutput
    from m2agent.engine.sampling import SamplingParams

_PUBLIC = {
    "LLM": "m2agent.engine.llm",
    "RequestOutput": "m2agent.engine.llm",
    "SamplingParams": "m2agent.engine.sampling",
    "EngineError": "m2agent.engine.errors",
    "ConfigError": "m2agent.engine.errors",
    "CheckpointError": "m2agent.engine.errors",
}

__all__ = [
    "LLM",
    "CheckpointError",
    "ConfigError",
    "EngineError",
    "RequestOutput",
    "SamplingParams",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'm2agent.engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
