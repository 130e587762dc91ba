"""The GitHub REST client `m2agent ci --pr` uses, against a loopback fake of the API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from m2agent.errors import BackendError, UsageError
from m2agent.github import GitHubClient
from m2agent.settings import Settings


@pytest.fixture
def api() -> Iterator[tuple[str, list[tuple[str, str, dict]]]]:
    calls: list[tuple[str, str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            calls.append(("GET", self.path, {}))
            if self.path == "/repos/octo/calc":
                self._reply(200, {"default_branch": "trunk"})
            elif self.path.startswith("/repos/octo/calc/pulls"):
                self._reply(200, [])
            else:
                self._reply(404, {"message": "Not Found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            calls.append(("POST", self.path, body))
            self._reply(201, {"number": 1, "html_url": "https://github.com/octo/calc/pull/1"})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", calls
    finally:
        server.shutdown()


def client(url: str, repository: str = "octo/calc") -> GitHubClient:
    return GitHubClient(Settings(github_token="t", github_api_url=url), repository)


def test_detached_checkout_targets_the_default_branch(api: tuple[str, list]) -> None:
    url, calls = api
    pull = client(url).open_or_update_pull("m2agent/fix", None, "title", "body")
    assert pull == "https://github.com/octo/calc/pull/1"
    post = next(body for method, _, body in calls if method == "POST")
    assert post["base"] == "trunk" and post["head"] == "m2agent/fix"


def test_api_errors_and_missing_token_are_clear(api: tuple[str, list]) -> None:
    url, _ = api
    with pytest.raises(BackendError, match="HTTP 404"):
        client(url, "octo/missing").default_branch()
    with pytest.raises(UsageError, match="GITHUB_TOKEN"):
        GitHubClient(Settings(github_api_url=url), "octo/calc")
