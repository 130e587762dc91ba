"""Render OpenAI-shaped messages and tools into MiniMax-M2's prompt text, byte for byte.

Mirrors MiniMax's official chat template (shared/M2_FORMAT.md §1). Pure Python: no torch, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from m2agent.engine.protocol import markers as m
from m2agent.engine.protocol.errors import ProtocolError

Message = Mapping[str, Any]


def render_prompt(
    messages: Sequence[Message],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = True,
) -> str:
    """Return the prompt exactly as M2's chat template renders `messages` and `tools`."""
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ProtocolError(f"messages[{i}] must be an object, got {type(message).__name__}")
    system: Message | None = None
    conversation = list(messages)
    if conversation and conversation[0].get("role") == "system":
        system, conversation = conversation[0], conversation[1:]
    last_user_index = max(
        (i for i, msg in enumerate(conversation) if msg.get("role") == "user"), default=-1
    )

    parts = [m.BEGIN_OF_DOCUMENT, m.BEGIN_OF_TURN, "system\n", _system_text(system)]
    if tools:
        parts.append(render_tools(tools))
    parts.append(m.END_OF_TURN + "\n")

    last_assistant_had_calls = False
    for i, message in enumerate(conversation):
        role = message.get("role")
        where = f"messages[{i + (system is not None)}]"
        if role == "user":
            parts += [m.BEGIN_OF_TURN, "user\n", _visible_text(message.get("content"), where)]
            parts.append(m.END_OF_TURN + "\n")
        elif role == "assistant":
            parts.append(
                _render_assistant(message, keep_reasoning=i > last_user_index, where=where)
            )
            last_assistant_had_calls = bool(message.get("tool_calls"))
        elif role == "tool":
            if not last_assistant_had_calls:
                raise ProtocolError(
                    f"{where} has role 'tool' but no earlier assistant message made a tool call"
                )
            if i == 0 or conversation[i - 1].get("role") != "tool":
                parts.append(m.BEGIN_OF_TURN + "tool")
            parts.append(_render_tool_result(message.get("content"), where))
            if i == len(conversation) - 1 or conversation[i + 1].get("role") != "tool":
                parts.append(m.END_OF_TURN + "\n")
        # The official template ignores any other role (a later system message included).

    if add_generation_prompt:
        parts.append(m.GENERATION_PROMPT)
    return "".join(parts)


def render_tools(tools: Sequence[Mapping[str, Any]]) -> str:
    """The `# Tools` section of the system turn: one JSON line per tool's function object."""
    lines = [m.TOOLS_HEADER]
    for i, tool in enumerate(tools):
        function = tool_function(tool, f"tools[{i}]")
        lines.append("<tool>" + json.dumps(function, ensure_ascii=False) + "</tool>\n")
    lines.append(m.TOOLS_FOOTER)
    return "".join(lines)


def tool_function(tool: Any, where: str = "tool") -> Mapping[str, Any]:
    """The `function` object of an OpenAI tool (also accepts the bare function object)."""
    if not isinstance(tool, Mapping):
        raise ProtocolError(f"{where} must be an object, got {type(tool).__name__}")
    function = tool.get("function", tool)
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise ProtocolError(f"{where} needs a 'function' object with a string 'name'")
    return function


def render_tool_calls(tool_calls: Sequence[Any], where: str = "tool_calls") -> str:
    """`\\n<minimax:tool_call>\\n` + one `<invoke>` per call + `</minimax:tool_call>`."""
    out = ["\n" + m.TOOL_CALL_OPEN + "\n"]
    for j, call in enumerate(tool_calls):
        name, arguments = _call_name_and_arguments(call, f"{where}[{j}]")
        out.append(f'<invoke name="{name}">\n')
        for key, value in arguments.items():
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            out.append(f'<parameter name="{key}">{text}{m.PARAMETER_CLOSE}\n')
        out.append(m.INVOKE_CLOSE + "\n")
    out.append(m.TOOL_CALL_CLOSE)
    return "".join(out)


def split_reasoning(message: Message, where: str = "message") -> tuple[str, str]:
    """(reasoning, content) of an assistant message, as the template derives them."""
    content = _visible_text(message.get("content"), where)
    reasoning = message.get("reasoning_content")
    if isinstance(reasoning, str):
        return reasoning, content
    if m.THINK_CLOSE in content:
        before = content.split(m.THINK_CLOSE)[0].strip("\n")
        reasoning = before.split(m.THINK_OPEN)[-1].strip("\n")
        return reasoning, content.split(m.THINK_CLOSE)[-1].strip("\n")
    return "", content


def _render_assistant(message: Message, *, keep_reasoning: bool, where: str) -> str:
    reasoning, content = split_reasoning(message, where)
    out = [m.BEGIN_OF_TURN, "ai\n"]
    if reasoning and keep_reasoning:
        out.append(f"{m.THINK_OPEN}\n{reasoning}\n{m.THINK_CLOSE}\n\n")
    out.append(content)
    tool_calls = message.get("tool_calls")
    if tool_calls:
        if not isinstance(tool_calls, Sequence) or isinstance(tool_calls, str | bytes):
            raise ProtocolError(f"{where}.tool_calls must be a list")
        out.append(render_tool_calls(tool_calls, f"{where}.tool_calls"))
    out.append(m.END_OF_TURN + "\n")
    return "".join(out)


def _call_name_and_arguments(call: Any, where: str) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(call, Mapping):
        raise ProtocolError(f"{where} must be an object")
    function = call.get("function") or call
    if not isinstance(function, Mapping):
        raise ProtocolError(f"{where}.function must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"{where} needs a non-empty string 'name'")
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        return name, {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as e:
            raise ProtocolError(f"{where}.arguments is not valid JSON: {e}") from e
    if not isinstance(arguments, Mapping):
        raise ProtocolError(f"{where}.arguments must be a JSON object")
    return name, arguments


def _render_tool_result(content: Any, where: str) -> str:
    if content is None:
        return "\n<response></response>"
    if isinstance(content, str):
        return f"\n<response>{content}</response>"
    if not isinstance(content, Sequence):
        raise ProtocolError(f"{where}.content must be a string or a list of parts")
    out = []
    for item in content:
        if isinstance(item, Mapping) and "output" in item:
            text = item["output"]
        elif isinstance(item, Mapping) and item.get("type") == "text" and "text" in item:
            text = item["text"]
        else:
            text = item
        out.append(f"\n<response>{text}\n</response>")
    return "".join(out)


def _system_text(system: Message | None) -> str:
    if system is not None and system.get("content"):
        text = _visible_text(system.get("content"), "messages[0]")
    else:
        text = m.DEFAULT_SYSTEM_PROMPT
    if system is not None and system.get("current_date"):
        text += f"\nCurrent date: {system['current_date']}"
    if system is not None and system.get("current_location"):
        text += f"\nCurrent location: {system['current_location']}"
    return text


def _visible_text(content: Any, where: str) -> str:
    """A message's text: a string, or the concatenation of a list's text parts and strings."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                text = part.get("text")
                texts.append("" if text is None else str(text))
        return "".join(texts)
    raise ProtocolError(f"{where}.content must be a string, a list of parts or null")
