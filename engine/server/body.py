"""Read a request body into a pydantic model: JSON decoded off the event loop, bad input turned
into a 400 that names the field, and unknown fields collected (ignored, logged, and listed in the
`X-M2Agent-Ignored-Fields` response header) rather than refused, as vLLM does."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from m2agent.engine.server.openai_api import APIError

logger = logging.getLogger(__name__)

IGNORED_FIELDS_HEADER = "X-M2Agent-Ignored-Fields"

Model = TypeVar("Model", bound=BaseModel)


async def read_model(request: Request, model: type[Model]) -> tuple[Model, list[str]]:
    """The body as `model`, and the dotted names of the fields it ignored."""
    raw = await request.body()
    data = await asyncio.to_thread(decode_json, raw)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        parsed = model.model_validate(data)
    except ValidationError as e:
        raise APIError(400, validation_message(e), param=_param(e)) from None
    ignored = unknown_fields(parsed)
    if ignored:
        logger.warning(
            "%s %s: ignored unknown fields: %s", request.method, request.url.path, ignored
        )
    return parsed, ignored


def decode_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise APIError(400, "the request body nests too deeply to parse") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}") from None


def validation_message(error: ValidationError) -> str:
    errors = error.errors()
    if not errors:
        return "invalid request"
    param = ".".join(str(p) for p in errors[0]["loc"])
    return f"{param}: {errors[0]['msg']}" if param else errors[0]["msg"]


def _param(error: ValidationError) -> str | None:
    errors = error.errors()
    return (".".join(str(p) for p in errors[0]["loc"]) or None) if errors else None


def unknown_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the extra fields of `model` and of the models nested in it."""
    names = [prefix + key for key in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            names += unknown_fields(value, f"{prefix}{name}.")
    return sorted(names)


def ignored_header(ignored: list[str]) -> dict[str, str]:
    """The response header naming ignored fields (ASCII-escaped: header values are latin-1)."""
    if not ignored:
        return {}
    names = (n.encode("ascii", "backslashreplace").decode() for n in ignored)
    return {IGNORED_FIELDS_HEADER: ", ".join(names)}
