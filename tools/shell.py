"""Bash: run a command in the sandbox, in its own session; on timeout the whole process group
(and, under bubblewrap, the whole PID namespace) is killed. Output is capped keeping the head
and the tail. If no sandbox works and the user did not opt out, commands are refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from m2agent.tools.base import Description, ToolAnnotations, ToolError, ToolResult
from m2agent.tools.sandbox import bwrap
from m2agent.tools.sandbox.policy import SandboxPolicy, command_environment

DEFAULT_TIMEOUT_S = 120
MAX_TIMEOUT_S = 600
MAX_OUTPUT_CHARS = 30_000
KILL_GRACE_S = 2.0

SandboxMode = Literal["auto", "bwrap", "landlock", "off"]


@dataclass(frozen=True, slots=True)
class CommandResult:
    exit_code: int | None  # None when killed by the timeout
    output: str  # stdout and stderr, interleaved, capped
    timed_out: bool
    duration_s: float


class SandboxUnavailable(ToolError):
    """No sandbox backend works and the user did not turn the sandbox off."""


class CommandRunner:
    """Runs shell commands in the workspace under the chosen sandbox backend."""

    def __init__(self, policy: SandboxPolicy, mode: SandboxMode = "auto") -> None:
        self.policy, self.mode = policy, mode

    def backend(self) -> str:
        """The backend commands run under ("bwrap", "landlock" or "off"); fails closed."""
        if self.mode in ("off", "landlock"):
            return self.mode
        found = bwrap.probe() if self.mode == "auto" else bwrap.probe_bwrap()
        if not found.works or found.backend is None:
            raise SandboxUnavailable(
                f"commands are disabled: no sandbox works here. {found.diagnosis}. {found.advice} "
                "(Or run with --sandbox off, only inside an already isolated environment.)"
            )
        return found.backend

    def sandboxed_argv(
        self, argv: list[str], cwd: Path, private_tmp: Path | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """`argv` wrapped in this runner's sandbox, and the scrubbed environment to start it
        with. Landlock needs a private temp folder (`private_tmp`, which the caller creates
        and removes). Raises SandboxUnavailable when no sandbox works (fails closed)."""
        env = command_environment(self.policy)
        backend = self.backend()
        if backend == "bwrap":
            binary = bwrap.find_bwrap()
            if binary is None:
                raise SandboxUnavailable("bubblewrap disappeared after the probe found it")
            return bwrap.bwrap_argv(binary, self.policy, argv, cwd), env
        if backend == "landlock":
            if private_tmp is None:
                raise ValueError("the Landlock sandbox needs a private temp folder")
            env["TMPDIR"] = str(private_tmp)
            launcher = [sys.executable, "-m", "m2agent.tools.sandbox.launcher"]
            launcher += ["--workspace", str(self.policy.workspace), "--tmp", str(private_tmp)]
            network = ["--network"] if self.policy.allow_network else []
            return [*launcher, *network, "--", *argv], env
        return argv, env

    def run(
        self, command: str, timeout_s: float = DEFAULT_TIMEOUT_S, cwd: Path | None = None
    ) -> CommandResult:
        cwd = cwd or self.policy.workspace
        landlock = self.backend() == "landlock"
        private_tmp = Path(tempfile.mkdtemp(prefix="m2agent-cmd-")) if landlock else None
        try:
            argv, env = self.sandboxed_argv(["/bin/bash", "-c", command], cwd, private_tmp)
            return self._run(argv, cwd, env, timeout_s)
        finally:
            if private_tmp is not None:
                shutil.rmtree(private_tmp, ignore_errors=True)

    def _run(
        self, argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float
    ) -> CommandResult:
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        capture = _CappedCapture(MAX_OUTPUT_CHARS)
        reader = threading.Thread(target=capture.read_all, args=(process.stdout,), daemon=True)
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(process)
        finally:
            if process.poll() is None:
                _kill_group(process)
        reader.join(timeout=5)
        return CommandResult(
            None if timed_out else process.returncode,
            capture.text(),
            timed_out,
            time.monotonic() - started,
        )


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """TERM the process group, then KILL it after a grace period."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


class _CappedCapture:
    """Keeps the first and last `limit/2` characters of a stream, counting what it drops."""

    def __init__(self, limit: int) -> None:
        self.half = limit // 2
        self.head = ""
        self.tail = ""
        self.dropped = 0

    def read_all(self, stream: BinaryIO) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):  # type: ignore[attr-defined]
            text = chunk.decode("utf-8", "replace")
            if len(self.head) < self.half:
                room = self.half - len(self.head)
                self.head += text[:room]
                text = text[room:]
            if text:
                self.tail += text
                if len(self.tail) > self.half:
                    self.dropped += len(self.tail) - self.half
                    self.tail = self.tail[-self.half :]
        stream.close()

    def text(self) -> str:
        if not self.dropped:
            return self.head + self.tail
        return omission(self.head, self.dropped, self.tail)


def omission(head: str, dropped: int, tail: str) -> str:
    return f"{head}\n[... {dropped} characters omitted ...]\n{tail}"


def cap_text(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """`text` cut to about `limit` characters the way command output is: head and tail kept,
    the middle replaced by a marker counting what was dropped."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return omission(text[:half], len(text) - 2 * half, text[-half:])


class BashArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command: str = Field(
        min_length=1, description="The shell command to run (bash), in the workspace."
    )
    timeout: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TIMEOUT_S * 1000,
        description=(
            f"Timeout in milliseconds (default {DEFAULT_TIMEOUT_S * 1000}, "
            f"max {MAX_TIMEOUT_S * 1000})."
        ),
    )
    description: str | None = Field(
        default=None, description="What the command does, in 5-10 words."
    )


class BashTool:
    name: ClassVar[str] = "Bash"
    description: ClassVar[str] = (
        "Run a shell command in the workspace, inside a sandbox: writes outside the workspace "
        "fail, .git is read-only, the network is off unless the user allowed it. Output over "
        f"{MAX_OUTPUT_CHARS} characters keeps its head and tail. Use for builds, tests, git "
        "status/diff; prefer Read/Grep/Glob/Edit for files."
    )
    Args: ClassVar[type[BaseModel]] = BashArgs
    annotations: ClassVar[ToolAnnotations] = ToolAnnotations(read_only=False, destructive=True)

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner

    def describe(self, args: BashArgs) -> Description:
        why = f"# {args.description}\n" if args.description else ""
        preview = (
            f"{why}$ {args.command}\n(in {self.runner.policy.workspace}, {self._confinement()})"
        )
        return Description(args.command, preview, command=args.command)

    def _confinement(self) -> str:
        network = "network on" if self.runner.policy.allow_network else "network off"
        if self.runner.mode == "off":
            return f"sandbox OFF, {network}"
        return f"sandboxed ({self.runner.mode}), {network}"

    def run(self, args: BashArgs) -> ToolResult:
        timeout_s = (args.timeout or DEFAULT_TIMEOUT_S * 1000) / 1000
        result = self.runner.run(args.command, timeout_s)
        output = result.output.rstrip("\n") or "(no output)"
        meta = {
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
            "duration_s": result.duration_s,
        }
        if result.timed_out:
            return ToolResult(
                f"{output}\n[timed out after {timeout_s:g}s: the command and its children "
                "were killed]",
                is_error=True,
                metadata=meta,
            )
        if result.exit_code != 0:
            return ToolResult(
                f"{output}\n[exit code {result.exit_code}]", is_error=True, metadata=meta
            )
        return ToolResult(output, metadata=meta)
