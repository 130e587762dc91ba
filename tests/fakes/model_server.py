"""A real HTTP server on 127.0.0.1 that plays scripted MiniMax-M2 turns in the shape a given
kind of server would return them, and records every request it receives.

Styles: "append_think" (reasoning inside content after <think>, tool calls parsed: vLLM's
minimax_m2_append_think + minimax_m2 tool parser), "split" (reasoning_content field), "raw"
(no parsers: the model's text, XML included, in content), "completions" (/v1/completions),
"anthropic" (Messages API events: thinking blocks with signatures, text, tool_use).
Each turn is the model's raw continuation after the generation prompt.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from m2agent.engine.protocol import parse_output

Style = Literal["append_think", "split", "raw", "completions", "anthropic"]
Fault = Literal["429", "500", "cut", "bad_args"]


@dataclass
class FakeM2Server:
    turns: list[str]
    style: Style
    faults: dict[int, Fault] = field(default_factory=dict)  # request index -> fault
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers_seen: list[dict[str, str]] = field(default_factory=list)  # per request
    chunk_chars: int = 7
    port: int = 0  # a fixed port plays "the same endpoint again"
    delay_s: float = 0.0  # pause between chunks (a slow stream, to interrupt)

    def __post_init__(self) -> None:
        self._turn = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeM2Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self, body: dict[str, Any]) -> tuple[int, str | None, Fault | None]:
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
            fault = self.faults.get(index)
            if fault in ("429", "500", "cut"):
                return index, self.turns[min(self._turn, len(self.turns) - 1)], fault
            text = self.turns[self._turn] if self._turn < len(self.turns) else None
            self._turn += 1
            return index, text, fault

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._json(200, {"object": "list", "data": [{"id": "fake-m2", "object": "model"}]})

            def do_POST(self) -> None:  # /v1/chat/completions, /v1/completions, /v1/messages
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
                _, text, fault = fake._next(body)
                if fault == "429":
                    return self._json(
                        429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
                    )
                if fault == "500":
                    return self._json(500, {"error": {"message": "boom"}})
                if text is None:
                    return self._json(500, {"error": {"message": "the script has no more turns"}})
                chunks = list(fake._chunks(text, body, fault == "bad_args"))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                if fault == "cut":
                    chunks = chunks[: max(1, len(chunks) // 2)]
                for chunk in chunks:
                    try:
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client went away
                    if fake.delay_s:
                        time.sleep(fake.delay_s)
                if fault == "cut":
                    self.close_connection = True
                    return
                if fake.style == "anthropic":
                    return  # the Messages API ends with message_stop, not [DONE]
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _json(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def _pieces(self, text: str) -> Iterator[str]:
        for i in range(0, len(text), self.chunk_chars):
            yield text[i : i + self.chunk_chars]

    def _chunks(self, text: str, body: dict[str, Any], bad_args: bool) -> Iterator[dict[str, Any]]:
        usage = {
            "prompt_tokens": 100,
            "completion_tokens": len(text) // 4,
            "prompt_tokens_details": {"cached_tokens": 50},
        }
        if self.style == "anthropic":
            yield from self._anthropic(text, body, bad_args)
            return
        if self.style == "completions":
            for piece in self._pieces(text):
                yield {"choices": [{"index": 0, "text": piece, "finish_reason": None}]}
            yield {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
            yield {"choices": [], "usage": usage}
            return
        if self.style == "raw":
            deltas: list[dict[str, Any]] = [
                {"content": p} for p in self._pieces("<think>\n" + text)
            ]
            calls: list[dict[str, Any]] = []
        else:
            parsed = parse_output(text, body.get("tools"))
            reasoning, content = parsed.reasoning or "", parsed.content
            if self.style == "split":
                deltas = [{"reasoning_content": p} for p in self._pieces(reasoning)]
                deltas += [{"content": p} for p in self._pieces(content)]
            else:
                visible = f"<think>\n{reasoning}\n</think>\n\n{content}"
                deltas = [{"content": p} for p in self._pieces(visible)]
            calls = [
                {
                    "index": i,
                    "id": f"call_{uuid.uuid4().hex[:8]}",
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": "{not json" if bad_args else json.dumps(call.arguments),
                    },
                }
                for i, call in enumerate(parsed.tool_calls)
            ]
        for delta in deltas:
            yield {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        for call in calls:
            yield {
                "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]
            }
        yield {
            "choices": [
                {"index": 0, "delta": {}, "finish_reason": "tool_calls" if calls else "stop"}
            ]
        }
        yield {"choices": [], "usage": usage}

    def _anthropic(
        self, text: str, body: dict[str, Any], bad_args: bool
    ) -> Iterator[dict[str, Any]]:
        tools = [
            {"type": "function", "function": {"name": t["name"], "parameters": t["input_schema"]}}
            for t in body.get("tools", [])
        ]
        parsed = parse_output(text, tools)
        yield {
            "type": "message_start",
            "message": {"usage": {"input_tokens": 100, "cache_read_input_tokens": 50}},
        }
        index = 0
        if parsed.reasoning:
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "thinking", "thinking": ""},
            }
            for piece in self._pieces(parsed.reasoning):
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "thinking_delta", "thinking": piece},
                }
            yield {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "signature_delta", "signature": f"sig-{len(self.requests)}"},
            }
            yield {"type": "content_block_stop", "index": index}
            index += 1
        if parsed.content:
            yield {
                "type": "content_block_start",
                "index": index,
                "content_block": {"type": "text", "text": ""},
            }
            for piece in self._pieces(parsed.content):
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": piece},
                }
            yield {"type": "content_block_stop", "index": index}
            index += 1
        for call in parsed.tool_calls:
            block = {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:8]}",
                "name": call.name,
                "input": {},
            }
            yield {"type": "content_block_start", "index": index, "content_block": block}
            arguments = "{not json" if bad_args else json.dumps(call.arguments)
            for piece in self._pieces(arguments):
                yield {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
            yield {"type": "content_block_stop", "index": index}
            index += 1
        stop = "tool_use" if parsed.tool_calls else "end_turn"
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": stop},
            "usage": {"output_tokens": len(text) // 4},
        }
        yield {"type": "message_stop"}
