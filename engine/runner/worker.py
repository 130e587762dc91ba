"""`python -m m2agent.engine.runner.worker FD`: one rank other than 0.

Reads a `WorkerStart` from the socket FD, joins the group, loads its slice of the model, answers
`WorkerReady` (or `WorkerFailed` with the reason), then performs each `RunnerCommand` rank 0
announces until the socket closes."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import logging
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from m2agent.engine.runner.messages import (
    RUNNER_COMMANDS,
    WorkerFailed,
    WorkerReady,
    WorkerStart,
)

if TYPE_CHECKING:
    from m2agent.engine.runner.model_runner import ModelRunner

logger = logging.getLogger("m2agent.engine.tp")


def main(argv: list[str]) -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when to stop
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: where is it stuck?
    conn = Connection(int(argv[0]))
    start = conn.recv()
    if not isinstance(start, WorkerStart):
        conn.send(WorkerFailed(f"expected a WorkerStart message, got {type(start).__name__}"))
        return 1
    logging.basicConfig(
        level=start.log_level or logging.WARNING,
        filename=start.log_file,
        format=f"%(asctime)s %(levelname)s tp{start.rank} %(name)s: %(message)s",
    )
    try:
        runner = _build_runner(start)
    except Exception as e:  # reported to rank 0, which tells the user
        logger.error("loading failed:\n%s", traceback.format_exc())
        conn.send(WorkerFailed(f"{type(e).__name__}: {e}"))
        return 1
    conn.send(WorkerReady())
    return _serve(conn, runner)


def _serve(conn: Connection, runner: ModelRunner) -> int:
    while True:
        try:
            command = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            break  # rank 0 closed the socket (or is gone): done
        if not isinstance(command, RUNNER_COMMANDS):
            conn.send(WorkerFailed(f"not a runner command: {command!r}"))
            return 1
        try:
            runner.perform(command)
        except Exception as e:
            name = type(command).__name__
            logger.error("%s failed:\n%s", name, traceback.format_exc())
            conn.send(WorkerFailed(f"{name} failed: {type(e).__name__}: {e}"))
            return 1
    import torch.distributed as dist

    runner.release_graphs()  # graphs holding NCCL work go before the communicator
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def _build_runner(start: WorkerStart) -> ModelRunner:
    from m2agent.engine.loader import load_model
    from m2agent.engine.runner.model_runner import ModelRunner
    from m2agent.engine.runner.workers import device_for, join_group

    config = start.config
    tp = join_group(start.address, start.rank, start.device_type)
    loaded = load_model(
        config.model,
        device_for(start.device_type, start.rank),
        config.dtype,
        config.load_format,
        config.seed,
        tp,
    )
    return ModelRunner(loaded.model, config.block_size, loaded.device, loaded.dtype, tp)


def _die_with_parent() -> None:
    """Linux: get SIGKILL when rank 0 dies, even while blocked inside a collective. (The
    kernel ties this to the thread that started us: rank 0 starts workers from the thread that
    keeps the engine.)"""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # rank 0 died before the request took effect
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
