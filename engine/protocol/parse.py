"""Parse MiniMax-M2's output, whole or streamed, into reasoning, content and tool calls.

One incremental state machine serves both: `parse_output(text)` is `OutputParser` fed the whole
text, so streaming and batch parsing cannot disagree. Text is emitted as soon as no later chunk
can change it: a tag split across chunks never leaks out as text. Tolerant of everything in
shared/M2_FORMAT.md §2. Pure Python: no torch, no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any

from m2agent.engine.protocol import markers as m
from m2agent.engine.protocol.render import tool_function
from m2agent.engine.protocol.schema import convert_value, parameter_schemas
from m2agent.engine.protocol.types import (
    ContentDelta,
    ParsedOutput,
    ParserEvent,
    ReasoningDelta,
    ToolCall,
    ToolCallParsed,
    ToolCallStarted,
)

_INVOKE_OPEN = "<invoke"
_PARAMETER_OPEN = "<parameter"
_NAME_ATTR = re.compile(r"""\bname\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+))""")
# Where a parameter value ends: its close tag, or (close tag missing) the next structural tag.
_VALUE_END = re.compile(
    r"</parameter>|</invoke>|</minimax:tool_call>|\[e~\[|<parameter\s+name|<invoke\s+name"
)
_LONGEST_VALUE_END = len(m.TOOL_CALL_CLOSE)


class _State(enum.Enum):
    START = enum.auto()  # may open with `<think>` (servers that prepend it)
    REASONING = enum.auto()
    CONTENT = enum.auto()
    BLOCK = enum.auto()  # inside <minimax:tool_call>, between invokes
    INVOKE = enum.auto()  # inside <invoke>, between parameters
    VALUE = enum.auto()  # inside a <parameter> value
    DONE = enum.auto()  # after the end-of-turn marker: the rest is ignored


def parse_output(
    text: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    in_reasoning: bool = True,
    parse_tool_calls: bool = True,
) -> ParsedOutput:
    """Parse the model's continuation after the generation prompt (see `OutputParser`)."""
    parser = OutputParser(tools, in_reasoning=in_reasoning, parse_tool_calls=parse_tool_calls)
    parser.feed(text)
    return parser.finish()


class OutputParser:
    """Streaming parser of one assistant turn.

    `in_reasoning=True` (default) is for raw model output, which starts inside `<think>`;
    `in_reasoning=False` is for content from servers that already split the reasoning out (a
    leading `<think>` still opens reasoning there). `tools` types the arguments by their JSON
    schemas and flags calls to tools that were not offered; `None` accepts any name, untyped.
    `parse_tool_calls=False` leaves tool-call blocks in the content as text (a server asked
    for no tool parsing). `max_tool_calls` keeps only the first calls (a client that asked for
    no parallel calls): later `<invoke>` blocks are parsed and dropped, never reported.
    """

    def __init__(
        self,
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        in_reasoning: bool = True,
        parse_tool_calls: bool = True,
        max_tool_calls: int | None = None,
    ) -> None:
        self._functions: dict[str, Mapping[str, Any]] | None = None
        if tools is not None:
            functions = [tool_function(tool, f"tools[{i}]") for i, tool in enumerate(tools)]
            self._functions = {f["name"]: f for f in functions}
        self._starts_in_reasoning = in_reasoning
        self._content_markers = (
            (m.TOOL_CALL_OPEN, m.END_OF_TURN) if parse_tool_calls else (m.END_OF_TURN,)
        )
        self._state = _State.START
        self._buf = ""
        self._scan_from = 0  # VALUE: where to resume looking for the value's end
        self._lead_newlines = 0  # CONTENT: newlines after </think> still to drop (layout)
        self._after_block = False  # CONTENT: whitespace-only text after a block is dropped
        self._reasoning: list[str] | None = None
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._max_calls = max_tool_calls
        self._dropping = False  # inside an <invoke> past max_tool_calls
        self._call_name: str | None = None
        self._call_args: dict[str, str] = {}
        self._value_key = ""
        self._events: list[ParserEvent] = []
        self._result: ParsedOutput | None = None

    def feed(self, delta: str) -> list[ParserEvent]:
        """Add a chunk of output; return the events it made certain."""
        if self._result is not None:
            raise RuntimeError("OutputParser.feed() called after finish()")
        self._buf += delta
        self._run(final=False)
        return self._take_events()

    def finish(self) -> ParsedOutput:
        """End of output: resolve what was held back and return the whole parsed turn."""
        if self._result is None:
            self._run(final=True)
            self._result = ParsedOutput(
                reasoning=None if self._reasoning is None else "".join(self._reasoning),
                content="".join(self._content),
                tool_calls=list(self._calls),
            )
        return self._result

    def flush_events(self) -> list[ParserEvent]:
        """The events that `finish()` made certain (the held-back tail): call it after
        `finish()` when streaming, so the deltas add up to the parsed result."""
        return self._take_events()

    # -- the state machine -------------------------------------------------------------------

    def _run(self, *, final: bool) -> None:
        steps = {
            _State.START: self._start,
            _State.REASONING: self._reasoning_step,
            _State.CONTENT: self._content_step,
            _State.BLOCK: self._block_step,
            _State.INVOKE: self._invoke_step,
            _State.VALUE: self._value_step,
            _State.DONE: self._done_step,
        }
        while steps[self._state](final):
            pass

    def _start(self, final: bool) -> bool:
        buf = self._buf
        if buf.startswith(m.THINK_OPEN):
            rest = buf[len(m.THINK_OPEN) :]
            if not rest and not final:
                return False  # a newline may follow the tag
            self._buf = rest[1:] if rest.startswith("\n") else rest
            self._enter_reasoning()
            return True
        if m.THINK_OPEN.startswith(buf) and not final:
            return False
        if self._starts_in_reasoning:
            self._enter_reasoning()
        else:
            self._state = _State.CONTENT
        return True

    def _enter_reasoning(self) -> None:
        self._reasoning = []
        self._state = _State.REASONING

    def _reasoning_step(self, final: bool) -> bool:
        found = _find_first(self._buf, (m.THINK_CLOSE, m.END_OF_TURN))
        if found is not None:
            index, marker = found
            text = self._buf[:index]
            if marker == m.THINK_CLOSE:
                text = _drop_one_newline(text)
                self._state, self._lead_newlines = _State.CONTENT, 2
            else:
                self._state = _State.DONE
            self._emit_reasoning(text)
            self._buf = self._buf[index + len(marker) :]
            return True
        if final:
            self._emit_reasoning(self._buf)
            self._buf = ""
            return False
        safe = _safe_length(self._buf, (m.THINK_CLOSE, m.END_OF_TURN), hold_newline=True)
        self._emit_reasoning(self._buf[:safe])
        self._buf = self._buf[safe:]
        return False

    def _content_step(self, final: bool) -> bool:
        while self._lead_newlines and self._buf.startswith("\n"):
            self._buf = self._buf[1:]
            self._lead_newlines -= 1
        if self._lead_newlines and not self._buf and not final:
            return False
        self._lead_newlines = 0
        markers = self._content_markers
        found = _find_first(self._buf, markers)
        if found is not None:
            index, marker = found
            text = self._buf[:index]
            if marker == m.TOOL_CALL_OPEN:
                self._emit_content(_drop_one_newline(text))
                self._state = _State.BLOCK
            else:
                self._emit_content(text)
                self._state = _State.DONE
            self._buf = self._buf[index + len(marker) :]
            return True
        if final:
            self._emit_content(self._buf)
            self._buf = ""
            return False
        safe = _safe_length(self._buf, markers, hold_newline=True)
        if not (self._after_block and not self._buf[:safe].strip()):
            self._emit_content(self._buf[:safe])
            self._buf = self._buf[safe:]
        return False

    def _block_step(self, final: bool) -> bool:
        self._buf = self._buf.lstrip()
        buf = self._buf
        if buf.startswith(m.TOOL_CALL_CLOSE):
            self._buf = buf[len(m.TOOL_CALL_CLOSE) :]
            self._state, self._after_block = _State.CONTENT, True
            return True
        if buf.startswith(m.END_OF_TURN):
            self._state = _State.DONE
            return True
        if _is_tag(buf, _INVOKE_OPEN):
            end = buf.find(">")
            if end < 0:
                if final:  # output ended inside the <invoke ...> tag
                    self._start_call(_name_of(buf))
                    self._end_call(error="the output ended inside the <invoke> tag")
                    self._buf = ""
                return False
            self._start_call(_name_of(buf[: end + 1]))
            self._buf = buf[end + 1 :]
            self._state = _State.INVOKE
            return True
        return self._skip_junk(buf, (m.TOOL_CALL_CLOSE, m.END_OF_TURN, _INVOKE_OPEN), final)

    def _invoke_step(self, final: bool) -> bool:
        self._buf = self._buf.lstrip()
        buf = self._buf
        if _is_tag(buf, _PARAMETER_OPEN):
            end = buf.find(">")
            if end < 0:
                if final:
                    self._end_call(error="the output ended inside a <parameter> tag")
                    self._buf = ""
                return False
            self._value_key = _name_of(buf[: end + 1])
            self._buf = buf[end + 1 :]
            self._state, self._scan_from = _State.VALUE, 0
            return True
        for marker, state, consume in (
            (m.INVOKE_CLOSE, _State.BLOCK, True),
            (m.TOOL_CALL_CLOSE, _State.BLOCK, False),
            (m.END_OF_TURN, _State.BLOCK, False),
        ):
            if buf.startswith(marker):
                self._end_call()
                self._buf = buf[len(marker) :] if consume else buf
                self._state = state
                return True
        if _is_tag(buf, _INVOKE_OPEN):  # next invoke without </invoke>
            self._end_call()
            self._state = _State.BLOCK
            return True
        if final and not buf:
            self._end_call()  # a missing </invoke> at the end of the output
            return False
        markers = (_PARAMETER_OPEN, m.INVOKE_CLOSE, m.TOOL_CALL_CLOSE, m.END_OF_TURN, _INVOKE_OPEN)
        return self._skip_junk(buf, markers, final)

    def _value_step(self, final: bool) -> bool:
        match = _VALUE_END.search(self._buf, self._scan_from)
        if match is None:
            if not final:
                self._scan_from = max(0, len(self._buf) - _LONGEST_VALUE_END)
                return False
            self._call_args[self._value_key] = _drop_one_newline(self._buf)
            self._buf = ""
            self._end_call(error=f"the output ended inside parameter {self._value_key!r}")
            self._state = _State.DONE
            return False
        value = self._buf[: match.start()]
        if match.group() == m.PARAMETER_CLOSE:
            self._buf = self._buf[match.end() :]
        else:  # close tag missing: the newline before the next tag is layout
            value = _drop_one_newline(value)
            self._buf = self._buf[match.start() :]
        self._call_args[self._value_key] = value
        self._state = _State.INVOKE
        return True

    def _done_step(self, final: bool) -> bool:
        self._buf = ""
        return False

    def _skip_junk(self, buf: str, markers: Sequence[str], final: bool) -> bool:
        """Drop stray text inside a block, keeping a possible partial marker at the end."""
        if not buf:
            return False
        if not final and any(marker.startswith(buf) for marker in markers):
            return False
        next_tag = buf.find("<", 1)
        next_end = buf.find(m.END_OF_TURN, 1)
        cut = min((i for i in (next_tag, next_end) if i > 0), default=len(buf))
        if cut == len(buf) and not final:
            cut = _safe_length(buf, markers, hold_newline=False)
            if cut == 0:
                return False
        self._buf = buf[cut:]
        return True

    # -- calls and emission ----------------------------------------------------------------------

    def _start_call(self, name: str) -> None:
        self._call_name, self._call_args = name, {}
        self._dropping = self._max_calls is not None and len(self._calls) >= self._max_calls
        if self._dropping:
            return
        self._events.append(ToolCallStarted(index=len(self._calls), name=name))

    def _end_call(self, error: str | None = None) -> None:
        if self._dropping:
            self._dropping = False
            self._call_name, self._call_args = None, {}
            return
        name = self._call_name or ""
        arguments: dict[str, Any] = dict(self._call_args)
        function = None if self._functions is None else self._functions.get(name)
        if function is not None:
            schemas = parameter_schemas(function)
            arguments = {k: convert_value(v, schemas.get(k)) for k, v in arguments.items()}
        if error is None and not name:
            error = "the <invoke> tag has no name attribute"
        if error is None and self._functions is not None and function is None:
            offered = ", ".join(sorted(self._functions)) or "none"
            error = f"unknown tool {name!r}; the tools offered are: {offered}"
        call = ToolCall(name=name, arguments=arguments, error=error)
        self._events.append(ToolCallParsed(index=len(self._calls), call=call))
        self._calls.append(call)
        self._call_name, self._call_args = None, {}

    def _emit_reasoning(self, text: str) -> None:
        if text and self._reasoning is not None:
            self._reasoning.append(text)
            self._events.append(ReasoningDelta(text))

    def _emit_content(self, text: str) -> None:
        if self._after_block:
            if not text.strip():
                return
            self._after_block = False
        if text:
            self._content.append(text)
            self._events.append(ContentDelta(text))

    def _take_events(self) -> list[ParserEvent]:
        events, self._events = _coalesce(self._events), []
        return events


def _coalesce(events: list[ParserEvent]) -> list[ParserEvent]:
    out: list[ParserEvent] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, ReasoningDelta) and isinstance(last, ReasoningDelta):
            out[-1] = ReasoningDelta(last.text + event.text)
        elif isinstance(event, ContentDelta) and isinstance(last, ContentDelta):
            out[-1] = ContentDelta(last.text + event.text)
        else:
            out.append(event)
    return out


def _find_first(text: str, markers: Sequence[str]) -> tuple[int, str] | None:
    hits = [(i, marker) for marker in markers if (i := text.find(marker)) >= 0]
    return min(hits) if hits else None


def _safe_length(text: str, markers: Sequence[str], *, hold_newline: bool) -> int:
    """How much of `text` can be emitted: all but a tail that may start a marker, and (with
    `hold_newline`) the newline before it, which is layout if a marker follows."""
    safe = len(text)
    for marker in markers:
        for k in range(min(len(marker) - 1, len(text)), 0, -1):
            if text.endswith(marker[:k]):
                safe = min(safe, len(text) - k)
                break
    if hold_newline and safe and text[safe - 1] == "\n":
        safe -= 1
    return safe


def _drop_one_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text


def _is_tag(buf: str, opening: str) -> bool:
    """`buf` starts with the tag `opening` followed by whitespace or `>`."""
    return buf.startswith(opening) and len(buf) > len(opening) and buf[len(opening)] in " \t\n\r>"


def _name_of(tag: str) -> str:
    match = _NAME_ATTR.search(tag)
    if match is None:
        return ""
    return next(group for group in match.groups() if group is not None)
