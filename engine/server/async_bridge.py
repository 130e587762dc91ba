"""The engine's step loop on its own thread, and per-request asyncio queues for the server.

Requests and aborts reach the loop through a command queue; each step's deltas go back to the
event loop with `call_soon_threadsafe`. A client that goes away aborts its request (the
consumer's `finally`). An exception inside a step fails the requests in flight, not the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from m2agent.engine.engine import LLMEngine, RequestDelta
from m2agent.engine.errors import EngineError
from m2agent.engine.sampling import SamplingParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Add:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    outbox: asyncio.Queue[RequestDelta | BaseException]


@dataclass(frozen=True, slots=True)
class _Abort:
    request_id: str


class AsyncEngine:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[_Add | _Abort | None] = queue.SimpleQueue()
        self._outboxes: dict[str, _Add] = {}
        self._thread = threading.Thread(target=self._run, name="m2agent-engine", daemon=True)
        self._stopping = threading.Event()
        self.error: BaseException | None = None  # set if the loop itself died
        self.num_finished = 0  # requests that ran to their end
        self.num_aborted = 0  # requests dropped before their end (client gone, errors)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        self._commands.put(None)
        self._thread.join(timeout=timeout_s)

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive() and self.error is None and not self._stopping.is_set()

    async def generate(
        self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams
    ) -> AsyncIterator[RequestDelta]:
        """Deltas of one request until it finishes; closing the iterator early aborts it."""
        outbox: asyncio.Queue[RequestDelta | BaseException] = asyncio.Queue()
        self._commands.put(
            _Add(request_id, list(prompt_ids), params, asyncio.get_running_loop(), outbox)
        )
        # Checked after queueing: a loop that ends later fails every queued request itself.
        if not self.is_alive:
            raise EngineError(self._stopped_reason())
        finished = False
        try:
            while not finished:
                item = await outbox.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self._commands.put(_Abort(request_id))

    # -- the engine thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._drain_commands(block=not self.engine.has_unfinished_requests())
                if self.engine.has_unfinished_requests():
                    self._step()
        except BaseException as e:  # the loop itself broke: report it
            logger.exception("engine loop died")
            self.error = e
        finally:  # nobody waits forever: fail the requests in flight and those still queued
            self._stopping.set()
            failure = EngineError(self._stopped_reason())
            for add in list(self._outboxes.values()):
                self._send(add, failure)
            self._outboxes.clear()
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                if isinstance(command, _Add):
                    self._send(command, failure)

    def _stopped_reason(self) -> str:
        return f"the engine stopped: {self.error}" if self.error else "the server is shutting down"

    def _drain_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while command is not None:
            if isinstance(command, _Add):
                try:
                    self.engine.add_request(command.request_id, command.prompt_ids, command.params)
                    self._outboxes[command.request_id] = command
                except EngineError as e:
                    self._send(command, e)
                except Exception as e:  # a bug in one request fails that request only
                    logger.exception("could not add request %s", command.request_id)
                    self.engine.abort(command.request_id)
                    self._send(command, EngineError(f"the request could not start: {e}"))
            else:
                if self.engine.abort(command.request_id):
                    self.num_aborted += 1
                self._outboxes.pop(command.request_id, None)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _step(self) -> None:
        try:
            deltas = self.engine.step()
        except Exception as e:  # fail the requests in flight; keep serving new ones
            logger.exception("engine step failed")
            for request_id, add in list(self._outboxes.items()):
                self.engine.abort(request_id)
                self.num_aborted += 1
                self._send(add, EngineError(f"generation failed: {e}"))
            self._outboxes.clear()
            return
        for delta in deltas:
            target = self._outboxes.get(delta.request_id)
            if target is None:
                continue
            if delta.finished:
                del self._outboxes[delta.request_id]
                self.num_finished += 1
            self._send(target, delta)

    @staticmethod
    def _send(add: _Add, item: RequestDelta | BaseException) -> None:
        # RuntimeError: the event loop is closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            add.loop.call_soon_threadsafe(add.outbox.put_nowait, item)
