"""Reading the small JSON files of a checkpoint (config, generation config, tokenizer config)
with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from m2agent.engine.errors import EngineError


def read_json_object(file: Path, error: type[EngineError]) -> dict[str, Any]:
    """The JSON object in `file`; `error` (naming the file) if unreadable or not an object."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{file}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise error(f"{file}: expected a JSON object")
    return data
