"""MiniMax-M2's wire format: render prompts, parse output (whole or streamed).

Pure Python, no torch: used by the engine's server and by the agent alike (shared/M2_FORMAT.md).
"""

from m2agent.engine.protocol.errors import ProtocolError
from m2agent.engine.protocol.parse import OutputParser, parse_output
from m2agent.engine.protocol.render import render_prompt, render_tool_calls
from m2agent.engine.protocol.types import (
    ContentDelta,
    ParsedOutput,
    ParserEvent,
    ReasoningDelta,
    ToolCall,
    ToolCallParsed,
    ToolCallStarted,
)

__all__ = [
    "ContentDelta",
    "OutputParser",
    "ParsedOutput",
    "ParserEvent",
    "ProtocolError",
    "ReasoningDelta",
    "ToolCall",
    "ToolCallParsed",
    "ToolCallStarted",
    "parse_output",
    "render_prompt",
    "render_tool_calls",
]
