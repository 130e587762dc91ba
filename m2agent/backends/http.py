"""HTTP plumbing shared by the backends: streaming JSON-lines over SSE, and retries with
backoff on 429/5xx/connection errors (honouring Retry-After). httpx errors are translated to
`BackendError` here, once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from m2agent.backends.base import Retrying
from m2agent.errors import BackendError

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after_s = reason, retry_after_s


def sse_events(
    client: httpx.Client, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
) -> Iterator[dict[str, Any]]:
    """The JSON objects of an SSE response, until `data: [DONE]` (or the end)."""
    try:
        with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code in RETRY_STATUSES:
                raise _Retryable(f"{url}: HTTP {response.status_code}", _retry_after(response))
            if response.status_code >= 400:
                response.read()
                raise BackendError(f"{url}: HTTP {response.status_code}: {_error_text(response)}")
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except json.JSONDecodeError:
                    raise _Retryable(f"{url}: malformed event: {data[:200]}") from None
                if isinstance(event, dict) and "error" in event:
                    raise BackendError(f"{url}: the server reported: {event['error']}")
                yield event
            raise _Retryable(f"{url}: the stream ended before [DONE] (connection cut)")
    except httpx.TimeoutException as e:
        raise _Retryable(f"{url}: timed out ({type(e).__name__})") from e
    except (httpx.TransportError, httpx.StreamError) as e:
        raise _Retryable(f"{url}: connection failed ({type(e).__name__}: {e})") from e


def with_retries(
    attempt: Callable[[], Iterator[Any]],
    *,
    max_attempts: int = 4,
    base_delay_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Any]:
    """Run `attempt()` to completion, starting over (after a `Retrying` event) when it fails
    in a way worth retrying."""
    for number in range(1, max_attempts + 1):
        try:
            yield from attempt()
            return
        except _Retryable as e:
            if number == max_attempts:
                raise BackendError(
                    f"the model endpoint failed {max_attempts} times: {e.reason}"
                ) from e
            delay = (
                e.retry_after_s if e.retry_after_s is not None else base_delay_s * 2 ** (number - 1)
            )
            delay = min(delay, 60.0)
            yield Retrying(number, e.reason, delay)
            sleep(delay)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        error = body.get("error", body)
        return str(error.get("message", error) if isinstance(error, dict) else error)[:500]
    except (ValueError, AttributeError):
        return response.text[:500]
