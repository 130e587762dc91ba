"""What rank 0 and the worker ranks say to each other, as typed values (pickled over a socket
pair): how a worker starts, whether it loaded, and the runner commands every rank performs.

One frozen dataclass per message; `RunnerCommand` is the closed set a worker accepts, and
`ModelRunner.perform` dispatches on it explicitly. No method names travel."""

from __future__ import annotations

from dataclasses import dataclass

from m2agent.engine.config import EngineConfig
from m2agent.engine.runner.batch_builder import StepPlan


@dataclass(frozen=True, slots=True)
class GroupAddress:
    """Where the ranks meet (a TCP store on loopback) and how many there are."""

    port: int
    size: int
    backend: str  # "nccl" on CUDA, "gloo" on CPU
    expert_parallel_size: int = 1


# -- start-up: rank 0 -> worker, then worker -> rank 0 ------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerStart:
    config: EngineConfig
    address: GroupAddress
    rank: int
    device_type: str  # "cuda" or "cpu"
    log_file: str | None  # log where rank 0 logs (a server's --log-file), at its level
    log_level: int


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The worker joined the group and loaded its slice of the model."""


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """The worker cannot go on; `reason` is shown to the user as is."""

    reason: str


WorkerStatus = WorkerReady | WorkerFailed


# -- runner commands: rank 0 -> every worker, in the order rank 0 performs them ---------------


@dataclass(frozen=True, slots=True)
class AllocateKV:
    num_blocks: int


@dataclass(frozen=True, slots=True)
class CaptureDecodeGraphs:
    max_batch: int
    max_model_len: int


@dataclass(frozen=True, slots=True)
class MeasureKVBudget:
    probe_tokens: int
    utilization: float


@dataclass(frozen=True, slots=True)
class WarmUp:
    token_counts: tuple[int, ...]  # chosen by rank 0: every rank runs the same steps


@dataclass(frozen=True, slots=True)
class RunStep:
    plan: StepPlan
    replay: bool  # from a captured decode graph


RunnerCommand = AllocateKV | CaptureDecodeGraphs | MeasureKVBudget | WarmUp | RunStep
RUNNER_COMMANDS = (AllocateKV, CaptureDecodeGraphs, MeasureKVBudget, WarmUp, RunStep)
