"""An MCP server's tool as one of the model's tools: named `mcp__SERVER__TOOL`, described by the
server's JSON schema, read-only when the server says so (`readOnlyHint`), its result (text,
images as a note, structured content as JSON) capped like Bash output. Pure: calling goes
through the `Call` the manager supplies."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from m2agent.tools.base import Description, ToolAnnotations, ToolResult
from m2agent.tools.shell import MAX_OUTPUT_CHARS, cap_text

PREFIX = "mcp__"
MAX_NAME = 64  # what OpenAI-style function names allow
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True, slots=True)
class RemoteTool:
    """A tool as a server listed it (plain values, no SDK types)."""

    server: str
    name: str
    description: str
    input_schema: Mapping[str, Any]
    read_only: bool
    destructive: bool


Call = Callable[[str, str, dict[str, Any]], ToolResult]  # (server, tool, arguments)


def exposed_name(server: str, tool: str) -> str:
    """`mcp__SERVER__TOOL`, with characters a function name cannot hold replaced by `_`."""
    return (PREFIX + server + "__" + _UNSAFE.sub("_", tool))[:MAX_NAME]


class SchemaArgs(BaseModel):
    """Arguments of a tool whose schema comes from elsewhere: any object passes here (the
    server validates), and the schema the model reads is the server's, unchanged."""

    model_config = ConfigDict(extra="allow")
    input_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return copy.deepcopy(cls.input_schema)


def args_model(schema: Mapping[str, Any]) -> type[SchemaArgs]:
    body = dict(schema) if schema else {}
    body.setdefault("type", "object")
    body.setdefault("properties", {})
    return type("McpArgs", (SchemaArgs,), {"input_schema": body})


class McpTool:
    """Satisfies `m2agent.tools.base.Tool`; one instance per listed remote tool."""

    def __init__(self, remote: RemoteTool, call: Call) -> None:
        self.remote = remote
        self.name = exposed_name(remote.server, remote.name)  # type: ignore[misc]
        self.description = (  # type: ignore[misc]
            remote.description or f"{remote.name} from the {remote.server} MCP server"
        )
        self.Args = args_model(remote.input_schema)  # type: ignore[misc]
        self.annotations = ToolAnnotations(  # type: ignore[misc]
            read_only=remote.read_only, destructive=remote.destructive
        )
        self._call = call

    # Declared for the Tool protocol (instances set them).
    name: ClassVar[str]
    description: ClassVar[str]
    Args: ClassVar[type[BaseModel]]
    annotations: ClassVar[ToolAnnotations]

    def describe(self, args: BaseModel) -> Description:
        """A call as its approval shows it. Like a command, a tool that is not read-only runs
        someone else's code: `command` is the tool's name, so approvals ask for it in
        `auto-edit` mode too, and "always" allows this one tool in this project."""
        arguments = json.dumps(args.model_dump(exclude_unset=True), ensure_ascii=False)
        summary = f"{self.remote.name} on {self.remote.server}: {arguments}"
        preview = f"MCP server {self.remote.server}, tool {self.remote.name}\n{arguments}"
        command = None if self.remote.read_only else self.name
        return Description(summary[:200], preview, command=command)

    def run(self, args: BaseModel) -> ToolResult:
        arguments = args.model_dump(exclude_unset=True)
        return self._call(self.remote.server, self.remote.name, arguments)


def render_content(
    blocks: Sequence[Mapping[str, Any]], structured: Any, is_error: bool
) -> ToolResult:
    """A `tools/call` result (its content blocks as JSON-ready dicts) as the model sees it."""
    parts: list[str] = []
    texts: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text", "")))
            parts.append(texts[-1])
        elif kind in ("image", "audio"):
            size = len(str(block.get("data", ""))) * 3 // 4
            mime = block.get("mimeType") or block.get("mime_type") or kind
            parts.append(f"[{kind} ({mime}, about {size} bytes) returned; not shown to the model]")
        elif kind == "resource_link":
            parts.append(f"[resource link: {block.get('uri')} {block.get('name') or ''}]".strip())
        elif kind == "resource":
            resource = block.get("resource") or {}
            if "text" in resource:
                parts.append(f"[resource {resource.get('uri')}]\n{resource['text']}")
            else:
                parts.append(f"[binary resource {resource.get('uri')}; not shown to the model]")
        else:
            parts.append(f"[{kind} content; not shown to the model]")
    # Servers also serialise structured content as text (the spec asks them to): show it only
    # when they did not.
    if structured is not None and not texts:
        parts.append(json.dumps(structured, indent=2, ensure_ascii=False, default=str))
    text = "\n".join(parts).strip() or "(no output)"
    return ToolResult(cap_text(text, MAX_OUTPUT_CHARS), is_error=is_error)
