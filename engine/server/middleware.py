"""Plain ASGI middleware in front of every route: the API key, the request-size limit and the
request log. Plain ASGI on purpose: Starlette's `@app.middleware("http")` wraps `receive`, so
`Request.is_disconnected()` never fires behind it and an abandoned request runs to its end."""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from m2agent.engine.server.openai_api import APIError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

request_log = logging.getLogger("m2agent.engine.server.requests")

OPEN_PATHS = frozenset({"/", "/health"})  # answer without the API key (liveness probes)


def is_anthropic_path(path: str) -> bool:
    return path.startswith(("/v1/messages", "/messages"))


def error_body(path: str, error: APIError) -> dict[str, Any]:
    """The error in the shape the route's clients parse (Anthropic under /v1/messages)."""
    return error.anthropic_body() if is_anthropic_path(path) else error.body()


def encode_json(body: Any) -> bytes:
    # ensure_ascii: an error may quote client text with lone surrogates, which UTF-8 refuses.
    return json.dumps(body, ensure_ascii=True).encode()


class Guard:
    """Rejects requests without the API key (401) or with a body over `max_body_bytes` (413),
    and logs one line per request: method, route, status, tokens and seconds. Routes put their
    token counts in `request.state.usage` (a dict)."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        path: str = scope["path"]
        status = 0

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await self._send_error(path, refusal, send_logged)
                return
            await self.app(scope, self._limited(receive, path), send_logged)
        except Exception:
            status = status or 500  # the error middleware outside answers it
            raise
        finally:
            state = scope.get("state") or {}
            usage = state.get("usage") or {}
            tokens = " ".join(f"{k}={v}" for k, v in usage.items())
            request_log.info(
                "%s %s %s%s %.3fs",
                scope.get("method", "?"),
                path,
                status or "499",  # no response started and no error: the client went away
                f" {tokens}" if tokens else "",
                time.monotonic() - started,
            )

    def _refusal(self, scope: Scope) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.api_key and scope["path"] not in OPEN_PATHS:
            given = headers.get("x-api-key") or ""
            bearer = headers.get("authorization", "")
            if bearer.lower().startswith("bearer "):
                given = given or bearer[7:].strip()
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                return APIError(
                    401,
                    "invalid or missing API key (send 'Authorization: Bearer KEY' or 'x-api-key')",
                    type="authentication_error",
                    code="invalid_api_key",
                )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            return self._too_large()
        return None

    def _too_large(self) -> APIError:
        return APIError(
            413,
            f"the request body is larger than the server's limit of {self.max_body_bytes} bytes "
            "(m2agent serve --max-request-bytes)",
            type="request_too_large",
            code="request_too_large",
        )

    def _limited(self, receive: Receive, path: str) -> Receive:
        """`receive` that raises a 413 once the body (chunked or lying about its length)
        grows past the limit, before it is all in memory."""
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise self._too_large()
            return message

        return limited

    @staticmethod
    async def _send_error(path: str, error: APIError, send: Send) -> None:
        body = encode_json(error_body(path, error))
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
