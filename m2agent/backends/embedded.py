"""The `embedded` backend: our own engine on this machine. Starts `m2agent serve` for a local
checkpoint on a free loopback port, over `tp` GPUs (or reuses the one already running for that
model and tp), waits
for it to be healthy, and talks to it with the `completions` transport. The server exits by
itself after a quiet period, so nothing is left running for long."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from m2agent.agent.messages import Message
from m2agent.backends.base import StreamEvent
from m2agent.errors import BackendError
from m2agent.tools.files import atomic_write

IDLE_EXIT_S = 900.0
_ADDRESS = re.compile(r"at (http://127\.0\.0\.1:\d+)/v1")


def is_local_model(model: str | None) -> bool:
    return bool(model) and (Path(model) / "config.json").is_file()  # type: ignore[arg-type]


def ensure_engine(
    model_path: Path,
    state_dir: Path,
    *,
    device: str | None = None,
    tp: int = 1,
    idle_exit_s: float = IDLE_EXIT_S,
    start_timeout_s: float = 1800.0,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[str, str]:
    """(base URL ending in /v1, served model name) of a healthy engine serving `model_path`."""
    model_path = model_path.resolve()
    identity = str(model_path) if tp == 1 else f"{model_path}\0tp={tp}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    folder = state_dir / "engines"
    record_file = folder / f"{key}.json"
    name = model_path.name
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
            if _healthy(record["url"]):
                return record["url"], name
        except (OSError, ValueError, KeyError):
            pass
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{key}.log"
    # -P: run from inside a source checkout of m2agent, the cwd must not shadow the package.
    argv = [sys.executable, "-P", "-m", "m2agent", "serve", "--model", str(model_path),
            "--port", "0", "--served-model-name", name, "--log-file", str(log),
            "--idle-exit-s", str(idle_exit_s)]  # fmt: skip
    if device:
        argv += ["--device", device]
    if tp > 1:
        argv += ["--tp", str(tp)]
    on = f" on {tp} GPUs" if tp > 1 else ""
    progress(f"starting the embedded engine for {model_path}{on} (log: {log})")
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    assert process.stdout is not None
    url = None
    deadline = time.monotonic() + start_timeout_s
    said: list[str] = []
    for line in process.stdout:  # the engine prints its address once the model is loaded
        said.append(line)
        match = _ADDRESS.search(line)
        if match:
            url = match.group(1) + "/v1"
            break
        if time.monotonic() > deadline:
            break
    process.stdout.close()
    if url is None:
        process.kill()
        tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
        output = "".join(said)[-2000:]
        raise BackendError(f"the embedded engine did not start (see {log}):\n{output}{tail}")
    while time.monotonic() < deadline and not _healthy(url):
        if process.poll() is not None:
            raise BackendError(f"the embedded engine exited during start-up (see {log})")
        time.sleep(0.2)
    record = {"url": url, "pid": process.pid, "model": str(model_path), "tp": tp}
    atomic_write(record_file, json.dumps(record))
    return url, name


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url.removesuffix("/v1") + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class BackgroundEngine:
    """The embedded backend, started on a thread so the REPL's prompt appears at once; the
    first model request waits for the engine to be up."""

    name = "embedded"

    def __init__(
        self,
        model_path: Path,
        state_dir: Path,
        *,
        tp: int = 1,
        device: str | None = None,
        **backend_options: Any,
    ) -> None:
        self._options, self._tp, self._device = backend_options, tp, device
        self._backend: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._start,
            args=(model_path, state_dir),
            name="m2agent-engine-start",
            daemon=True,
        )
        self._thread.start()

    def _start(self, model_path: Path, state_dir: Path) -> None:
        from m2agent.backends.completions import CompletionsBackend

        try:
            url, name = ensure_engine(model_path, state_dir, tp=self._tp, device=self._device)
            self._backend = CompletionsBackend(url, name, **self._options)
        except BaseException as e:  # reported on the first request, on the caller's thread
            self._error = e

    @property
    def ready(self) -> bool:
        return not self._thread.is_alive()

    def stream(
        self, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]]
    ) -> Iterator[StreamEvent]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._backend.stream(messages, tools)
