"""Tools by name: their OpenAI-style schemas, and calls validated at the boundary. Every call
returns a `ToolResult`: unknown names, bad arguments and tool failures come back as errors the
model can read and fix."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from m2agent.tools.base import Description, Tool, ToolError, ToolResult

logger = logging.getLogger(__name__)


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool]) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            if tool.name in self._tools:
                raise ValueError(f"duplicate tool name {tool.name!r}")
            self._tools[tool.name] = tool

    def with_tools(self, extra: Iterable[Tool]) -> ToolRegistry:
        """A registry of these tools and `extra` (a duplicate name is an error)."""
        return ToolRegistry([*self._tools.values(), *extra])

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(self._tools)}") from None

    def schemas(self) -> list[dict[str, Any]]:
        """The tools in the OpenAI `tools` format (what the chat template renders)."""
        out = []
        for tool in self._tools.values():
            schema = tool.Args.model_json_schema(by_alias=True)
            schema.pop("title", None)
            for prop in schema.get("properties", {}).values():
                prop.pop("title", None)
            out.append(
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": schema,
                    },
                }
            )
        return out

    def describe(self, name: str, arguments: Mapping[str, Any]) -> Description:
        """What a call would do, from the tool itself. ToolError when the name is unknown or
        the arguments are invalid (the text is what the model reads)."""
        tool = self.get(name)
        return tool.describe(self._validate(tool, arguments))

    def call(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Validate and run one call. Never raises for the model's mistakes."""
        try:
            tool = self.get(name)
            return tool.run(self._validate(tool, arguments))
        except ToolError as e:
            return ToolResult(str(e), is_error=True)
        except Exception as e:  # the per-tool-call boundary: log it, tell the model
            logger.exception("tool %s failed", name)
            return ToolResult(f"{name} failed unexpectedly: {type(e).__name__}: {e}", is_error=True)

    @staticmethod
    def _validate(tool: Tool, arguments: Mapping[str, Any]) -> Any:
        try:
            return tool.Args.model_validate(dict(arguments))
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in e.errors()
            )
            raise ToolError(f"invalid arguments for {tool.name}: {problems}") from None
