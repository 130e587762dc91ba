"""Type a tool call's raw parameter text by the tool's JSON schema (shared/M2_FORMAT.md §2).

A value that does not parse as its declared type stays the raw string; a string-typed or
untyped parameter is never parsed. Pure Python.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

_INT_RE = re.compile(r"[+-]?\d+")


def parameter_schemas(function: Mapping[str, Any]) -> Mapping[str, Any]:
    """`properties` of a tool function's parameters schema (empty when absent or malformed)."""
    parameters = function.get("parameters")
    if not isinstance(parameters, Mapping):
        return {}
    properties = parameters.get("properties")
    return properties if isinstance(properties, Mapping) else {}


def schema_types(schema: Any) -> set[str]:
    """The JSON types a schema admits: from `type` (string or list) and `anyOf`/`oneOf`."""
    if not isinstance(schema, Mapping):
        return set()
    types: set[str] = set()
    declared = schema.get("type")
    if isinstance(declared, str):
        types.add(declared)
    elif isinstance(declared, list):
        types.update(t for t in declared if isinstance(t, str))
    for key in ("anyOf", "oneOf"):
        alternatives = schema.get(key)
        if isinstance(alternatives, list):
            for alternative in alternatives:
                types |= schema_types(alternative)
    return types


def convert_value(raw: str, schema: Any) -> Any:
    """The typed value of one parameter, or `raw` itself when it does not fit the schema."""
    types = schema_types(schema)
    if not types:
        return raw
    text = raw.strip()
    if "null" in types and text.lower() == "null":
        return None
    if "string" in types:
        return raw
    for kind in ("integer", "number", "boolean", "object", "array"):
        if kind in types:
            converted = _CONVERTERS[kind](text)
            if converted is not _NO_MATCH:
                return converted
    return raw


_NO_MATCH = object()


def _to_integer(text: str) -> Any:
    if _INT_RE.fullmatch(text):
        return int(text)
    number = _to_number(text)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return _NO_MATCH


def _to_number(text: str) -> Any:
    if _INT_RE.fullmatch(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return _NO_MATCH
    return value if math.isfinite(value) else _NO_MATCH


def _to_boolean(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    return _NO_MATCH


def _json_of(kind: type) -> Any:
    def convert(text: str) -> Any:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            return _NO_MATCH
        return value if isinstance(value, kind) else _NO_MATCH

    return convert


_CONVERTERS = {
    "integer": _to_integer,
    "number": _to_number,
    "boolean": _to_boolean,
    "object": _json_of(dict),
    "array": _json_of(list),
}
