"""Typing of parameter values by JSON schema (shared/M2_FORMAT.md §2, "Argument values")."""

from __future__ import annotations

from typing import Any

import pytest

from m2agent.engine.protocol.schema import convert_value, schema_types


@pytest.mark.parametrize(
    ("raw", "schema", "expected"),
    [
        ("hello", {"type": "string"}, "hello"),
        ("[1, 2]", {"type": "string"}, "[1, 2]"),
        ("null", {"type": "string"}, "null"),
        ("7", None, "7"),
        ("7", {}, "7"),
        ("7", {"enum": ["7"]}, "7"),
        (" 7\n", {"type": "integer"}, 7),
        ("3.0", {"type": "integer"}, 3),
        ("3.5", {"type": "integer"}, "3.5"),
        ("-2", {"type": "number"}, -2),
        ("2.5e3", {"type": "number"}, 2500.0),
        ("inf", {"type": "number"}, "inf"),
        ("True", {"type": "boolean"}, True),
        ("false", {"type": "boolean"}, False),
        ("1", {"type": "boolean"}, True),
        ("0", {"type": "boolean"}, False),
        ("maybe", {"type": "boolean"}, "maybe"),
        ('{"a": 1}', {"type": "object"}, {"a": 1}),
        ("[1]", {"type": "object"}, "[1]"),
        ("[1, {}]", {"type": "array"}, [1, {}]),
        ("NULL", {"type": ["integer", "null"]}, None),
        ("null", {"type": "integer"}, "null"),
        ("null", {"anyOf": [{"type": "object"}, {"type": "null"}]}, None),
        ("null", {"oneOf": [{"type": "string"}, {"type": "null"}]}, None),
        ("5", {"anyOf": [{"type": "integer"}, {"type": "string"}]}, "5"),
        ("5", {"type": ["integer", "boolean"]}, 5),
    ],
)
def test_convert_value(raw: str, schema: Any, expected: Any) -> None:
    got = convert_value(raw, schema)
    assert got == expected
    assert type(got) is type(expected)


def test_schema_types_nested_alternatives() -> None:
    schema = {"anyOf": [{"type": ["string", "null"]}, {"oneOf": [{"type": "array"}]}]}
    assert schema_types(schema) == {"string", "null", "array"}
