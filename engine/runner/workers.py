"""The processes of ranks 1..N-1, and the rank-0 side that starts, commands and watches them.

Rank 0 (the process running `LLMEngine`) starts one worker per extra rank (`worker.py`). Each
worker joins the process group, loads its slice of the model and then waits on a socket for
the runner commands rank 0 announces (`messages.RunnerCommand`), performing each on its own
runner. A socket rather than a collective carries the calls: an idle server sends
nothing, and a worker whose rank 0 is gone sees end-of-file and exits. A worker that dies
leaves the other ranks blocked inside a collective, so rank 0 then exits too, saying which
rank failed and why.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from multiprocessing.connection import Connection
from typing import Any

from m2agent.engine.config import EngineConfig
from m2agent.engine.errors import EngineError
from m2agent.engine.layers.parallel import TensorParallel
from m2agent.engine.model_config import ModelConfig
from m2agent.engine.runner.messages import (
    GroupAddress,
    RunnerCommand,
    WorkerFailed,
    WorkerReady,
    WorkerStart,
)

logger = logging.getLogger(__name__)

# Collectives that take longer than this (a hung peer) fail instead of waiting forever.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def open_store(size: int) -> Any:
    """Rank 0's rendezvous store on a loopback port the OS picks (no port race)."""
    import torch.distributed as dist

    return dist.TCPStore(
        "127.0.0.1", 0, size, is_master=True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False
    )


def join_group(
    address: GroupAddress, rank: int, device_type: str, store: Any = None
) -> TensorParallel:
    """Join the process group as `rank` (rank 0 passes its store; the others connect to it);
    returns the TensorParallel for this rank."""
    import torch
    import torch.distributed as dist

    if device_type == "cuda":
        torch.cuda.set_device(rank)
    if store is None:
        store = dist.TCPStore(
            "127.0.0.1", address.port, address.size, is_master=False, timeout=COLLECTIVE_TIMEOUT
        )
    dist.init_process_group(
        address.backend,
        store=store,
        rank=rank,
        world_size=address.size,
        timeout=COLLECTIVE_TIMEOUT,
    )
    return TensorParallel(rank, address.size, dist.group.WORLD, address.expert_parallel_size)


def device_for(device_type: str, rank: int) -> str:
    return f"cuda:{rank}" if device_type == "cuda" else "cpu"


class Workers:
    """Rank 0's handle on ranks 1..N-1: `python -m m2agent.engine.runner.worker` each,
    over a socket pair (a fresh interpreter: nothing of the caller's __main__ re-runs)."""

    def __init__(self, config: EngineConfig, address: GroupAddress, device_type: str) -> None:
        self.address = address
        self._conns: list[Connection] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closing = False
        self._ending = threading.Lock()
        for rank in range(1, address.size):
            ours, theirs = socket.socketpair()
            # -P: a source checkout in the cwd must not shadow the installed package.
            module = "m2agent.engine.runner.worker"
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", module, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
            theirs.close()
            conn = Connection(ours.detach())
            conn.send(WorkerStart(config, address, rank, device_type, *_log_setup()))
            self._conns.append(conn)
            self._procs.append(proc)
            threading.Thread(
                target=self._watch, args=(rank,), name=f"m2agent-tp{rank}-watch", daemon=True
            ).start()

    @property
    def pids(self) -> list[int]:
        """Process ids of ranks 1..N-1, in rank order (for diagnostics: `kill -USR1` prints
        a worker's stacks)."""
        return [proc.pid for proc in self._procs]

    def announce(self, command: RunnerCommand) -> None:
        """Have every worker perform `command` (pickled once, sent to each)."""
        message = pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in enumerate(self._conns, start=1):
            try:
                conn.send_bytes(message)
            except OSError:  # the worker is gone (broken pipe): say why, if it said
                self.explain_failure()
                raise EngineError(f"tensor-parallel rank {rank} stopped taking commands") from None

    def wait_ready(self) -> None:
        """Block until every worker has loaded its slice; raise EngineError with the first
        worker's error otherwise."""
        for rank, conn in enumerate(self._conns, start=1):
            try:
                status = conn.recv()
            except (EOFError, OSError):
                raise EngineError(f"tensor-parallel rank {rank} exited while loading") from None
            if isinstance(status, WorkerFailed):
                raise EngineError(f"tensor-parallel rank {rank}: {status.reason}")
            if not isinstance(status, WorkerReady):
                raise EngineError(f"tensor-parallel rank {rank} sent {status!r} while loading")

    def close(self) -> None:
        """Stop the workers (they exit when their connection closes)."""
        self._closing = True
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def explain_failure(self, timeout_s: float = 10.0) -> None:
        """A collective failed on rank 0 (gloo raises when a peer's connection drops; NCCL
        just waits, and the watch threads act): if a worker has exited, or exits within
        `timeout_s`, end this process with that worker's reason. Returns otherwise."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for rank, proc in enumerate(self._procs, start=1):
                code = proc.poll()
                if code is not None and not self._closing:
                    self._end_because(rank, code)
            time.sleep(0.05)

    def _watch(self, rank: int) -> None:
        """A worker that exits before `close` leaves rank 0 blocked in its next collective:
        report why and end this process."""
        code = self._procs[rank - 1].wait()
        if not self._closing:
            self._end_because(rank, code)

    def _end_because(self, rank: int, code: int) -> None:
        """Tell the user which rank exited and why (its last message), then exit; once."""
        if not self._ending.acquire(blocking=False):
            self._ending.acquire()  # another thread is ending the process: never returns
        detail = ""
        try:
            conn = self._conns[rank - 1]
            if conn.poll(0.5):
                status = conn.recv()
                detail = status.reason if isinstance(status, WorkerFailed) else repr(status)
        except (EOFError, OSError, ValueError):
            pass
        how = f"code {code}" if code >= 0 else f"killed by {_signal_name(-code)}"
        message = (
            f"m2agent: tensor-parallel rank {rank} exited ({how})"
            + (f": {detail}" if detail else "")
            + "; the other ranks cannot go on without it, so the engine stops"
        )
        logger.critical(message)
        print(message, file=sys.stderr, flush=True)
        os._exit(1)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _log_setup() -> tuple[str | None, int]:
    """(log file, level) of this process, for the workers to log alike: a server started with
    --log-file keeps all ranks' logs in that file (and off a pipe nobody may be reading)."""
    root = logging.getLogger()
    files = [h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)]
    return (files[0] if files else None), root.level


def default_expert_parallel(config: ModelConfig, size: int) -> int:
    """The expert layout when none is asked for: plain tensor parallelism (1) while every
    expert's intermediate size splits evenly over the ranks (on the FP8 blocks for FP8
    weights), else whole experts on every rank (`size`): M2 in FP8 on 8 GPUs, where
    1536 / 8 = 192 cuts the 128-blocks. (The published vLLM layouts are TP4 on 4 GPUs and
    TP8+EP8 on 8; which is faster here at each batch size is measured on the GPU machine.)"""
    inter, fp8 = config.intermediate_size, config.fp8_for("block_sparse_moe.experts")
    block = fp8.block_rows if fp8 else 1
    if size == 1 or (inter % size == 0 and (inter // size) % block == 0):
        return 1
    return size if config.num_experts % size == 0 else 1


def start(config: EngineConfig) -> tuple[TensorParallel, Workers, str]:
    """Rank 0's start-up for `config.num_ranks` > 1: pick the expert layout, check that the
    model splits that way, spawn the workers, join the group. Returns (TensorParallel,
    workers, this rank's device)."""
    import torch
    import torch.distributed as dist

    from m2agent.engine.loader import resolve_device, resolve_dtype
    from m2agent.engine.model_config import load_model_config
    from m2agent.engine.models.minimax_m2 import MiniMaxM2ForCausalLM

    size = config.num_ranks
    if dist.is_available() and dist.is_initialized():
        raise EngineError(
            "a tensor-parallel engine is already running in this process: close it first "
            "(LLM.close() or a `with` block); one per process"
        )
    device = resolve_device(config.device)
    if device.index not in (None, 0):
        raise EngineError("with tensor parallelism pass device 'cuda' (ranks use GPUs 0..N-1)")
    if device.type == "cuda" and torch.cuda.device_count() < size:
        raise EngineError(
            f"tensor-parallel size {size} needs {size} GPUs; {torch.cuda.device_count()} visible "
            "(check CUDA_VISIBLE_DEVICES)"
        )
    model_config = load_model_config(config.model)
    ep = config.expert_parallel_size or default_expert_parallel(model_config, size)
    with torch.device("meta"):  # every split checked before any process starts
        MiniMaxM2ForCausalLM(
            model_config, resolve_dtype(config.dtype, device), TensorParallel(0, size, None, ep)
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    store = open_store(size)
    address = GroupAddress(store.port, size, backend, ep)
    workers = Workers(config, address, device.type)
    try:
        tp = join_group(address, 0, device.type, store)
    except BaseException:
        workers.close()
        raise
    return tp, workers, device_for(device.type, 0)
