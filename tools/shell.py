"""Bash: run a command in the sandbox, in its own session; on timeout the whole process group
(and, under bubblewrap, the whole PID namespace) is killed. Output is capped keeping the head
and the tail. If no sandbox works and the user did not opt out, commands are refused."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from m2agent.tools.base import Description, ToolAnnotations, ToolError, ToolResult
from m2agent.tools.sandbox import bwrap, launcher, privileges, reaper, seccomp
from m2agent.tools.sandbox.policy import Limits, SandboxPolicy, command_environment

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
    # Every process the command started is gone (a sandbox backend saw to it); False with the
    # sandbox off, where only the command's process group is killed.
    contained: bool = True
    notes: tuple[str, ...] = ()  # what the runner undid after the command, in words


class SandboxUnavailable(ToolError):
    """No sandbox backend works and the user did not turn the sandbox off."""


class CommandRunner:
    """Runs shell commands in the workspace under the chosen sandbox backend."""

    def __init__(self, policy: SandboxPolicy, mode: SandboxMode = "auto") -> None:
        self.policy, self.mode = policy, mode
        if sys.platform == "linux" and mode != "off":
            # The agent's own environment holds the keys it scrubbed from commands: make its
            # /proc/PID/environ and memory unreadable to them (and to its user's other tools).
            privileges.set_dumpable(False)

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
        """`argv` wrapped in this runner's sandbox (the same confinement, seccomp filter and
        limits as a Bash command), and the scrubbed environment to start it with, for a
        long-lived process that another library spawns (an MCP server): it needs no inherited
        descriptor. The sandbox needs a private folder (`private_tmp`, which the caller creates
        and removes). Raises SandboxUnavailable when no sandbox works (fails closed)."""
        env = command_environment(self.policy)
        backend = self.backend()
        if backend == "off":
            return argv, env
        if private_tmp is None:
            raise ValueError("a sandboxed process needs a private temp folder")
        if backend == "landlock":
            env["TMPDIR"] = str(private_tmp)
            return self._launcher_argv(argv, cwd, private_tmp), env
        binary = bwrap.find_bwrap()
        if binary is None:
            raise SandboxUnavailable("bubblewrap disappeared after the probe found it")
        families = seccomp.denied_families(allow_network=self.policy.allow_network, deny_unix=False)
        program = private_tmp / "seccomp.bpf"
        program.write_bytes(seccomp.program(families))
        limited = _with_limits(argv, self.policy.limits)
        wrapped = bwrap.bwrap_argv(binary, self.policy, limited, cwd, 3)
        # the shell opens the filter as fd 3 for bubblewrap's --seccomp, then becomes bubblewrap
        return ["/bin/sh", "-c", 'exec 3<"$0" && exec "$@"', str(program), *wrapped], env

    def _launcher_argv(self, argv: list[str], cwd: Path, private_tmp: Path) -> list[str]:
        """`argv` under the Landlock launcher. It runs with -I -S from a script path, so nothing
        from the workspace (or PYTHON* variables, or site-packages) runs before the sandbox is
        in place, whatever the working directory."""
        limits = self.policy.limits
        flags = launcher.options(
            str(self.policy.workspace),
            str(private_tmp),
            str(cwd),
            allow_network=self.policy.allow_network,
            hidden=[str(p) for p in self.policy.hidden],
            deny_unix=True,
            limits={
                "processes": limits.processes,
                "memory_bytes": limits.memory_bytes,
                "file_bytes": limits.file_bytes,
                "open_files": limits.open_files,
            },
        )
        return [sys.executable, "-I", "-S", launcher.script_path(), *flags, "--", *argv]

    def run(
        self, command: str, timeout_s: float = DEFAULT_TIMEOUT_S, cwd: Path | None = None
    ) -> CommandResult:
        cwd = cwd or self.policy.workspace
        argv = ["/bin/bash", "-c", command]
        env = command_environment(self.policy)
        backend = self.backend()
        missing = [p for p in self.policy.read_only_paths if not os.path.lexists(p)]
        private_tmp, filter_fd = None, None
        popen_cwd = cwd
        pass_fds: tuple[int, ...] = ()
        try:
            if backend == "bwrap":
                binary = bwrap.find_bwrap()
                assert binary is not None
                filter_fd = _filter_fd(self.policy)
                pass_fds = (filter_fd,)
                limited = _with_limits(argv, self.policy.limits)
                argv = bwrap.bwrap_argv(binary, self.policy, limited, cwd, filter_fd)
            elif backend == "landlock":
                private_tmp = tempfile.mkdtemp(prefix="m2agent-cmd-")
                env["TMPDIR"] = private_tmp
                argv = self._launcher_argv(argv, cwd, Path(private_tmp))
                popen_cwd = Path("/")
            watch = self.policy.limits.processes if os.geteuid() == 0 and backend != "off" else None
            result = self._run(argv, popen_cwd, env, timeout_s, pass_fds, watch)
        finally:
            if private_tmp is not None:
                shutil.rmtree(private_tmp, ignore_errors=True)
            if filter_fd is not None:
                os.close(filter_fd)
        notes = _remove_created(missing) if backend != "off" else ()
        return replace(result, contained=backend != "off", notes=result.notes + notes)

    def _run(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        timeout_s: float,
        pass_fds: tuple[int, ...] = (),
        max_processes: int | None = None,
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
            pass_fds=pass_fds,
        )
        capture = _CappedCapture(MAX_OUTPUT_CHARS)
        reader = threading.Thread(target=capture.read_all, args=(process.stdout,), daemon=True)
        reader.start()
        timed_out = False
        notes: tuple[str, ...] = ()
        try:
            if max_processes is None:
                process.wait(timeout=timeout_s)
            elif _watch_processes(process, max_processes, started + timeout_s):
                notes = (
                    f"stopped: the command ran more than {max_processes} processes "
                    "(limit_processes); all of them were killed",
                )
                _stop(process)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop(process)
        finally:
            if process.poll() is None:
                _stop(process)
        reader.join(timeout=5)
        return CommandResult(
            None if timed_out or notes else process.returncode,
            capture.text(),
            timed_out,
            time.monotonic() - started,
            notes=notes,
        )


def _watch_processes(process: subprocess.Popen[bytes], limit: int, deadline: float) -> bool:
    """Wait for the command, counting its processes: True (and the caller stops it) when it
    runs more than `limit`. For root, whom the kernel exempts from RLIMIT_NPROC. Cheap: the
    system's process count (/proc/loadavg) is read every 50 ms, the command's own tree is
    counted only when the system grew by more than `limit`. TimeoutExpired at the deadline."""
    baseline = _system_processes()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise subprocess.TimeoutExpired(process.args, 0)
        try:
            process.wait(timeout=min(0.05, remaining))
            return False
        except subprocess.TimeoutExpired:
            pass
        if _system_processes() - baseline > limit:
            if len(reaper.descendants(process.pid)) > limit:
                return True
            baseline = _system_processes()  # others grew, not the command


def _system_processes() -> int:
    with open("/proc/loadavg") as loadavg:
        return int(loadavg.read().split()[3].split("/")[1])


def _filter_fd(policy: SandboxPolicy) -> int:
    """The seccomp filter in a memfd, for bubblewrap's --seccomp (AF_UNIX stays: bubblewrap
    hides /run and /tmp, and its network namespace separates abstract sockets)."""
    families = seccomp.denied_families(allow_network=policy.allow_network, deny_unix=False)
    fd = os.memfd_create("m2agent-seccomp", 0)  # no CLOEXEC: bubblewrap reads it
    os.write(fd, seccomp.program(families))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _with_limits(argv: list[str], limits: Limits) -> list[str]:
    """`ulimit` soft and hard (no child can raise them), then the command. RLIMIT_NPROC counts
    every process of the user, so the cap is on top of what already runs."""
    wanted = [
        ("-u", resource.RLIMIT_NPROC, limits.processes, 1),
        ("-d", resource.RLIMIT_DATA, limits.memory_bytes, 1024),
        ("-f", resource.RLIMIT_FSIZE, limits.file_bytes, 1024),
        ("-n", resource.RLIMIT_NOFILE, limits.open_files, 1),
    ]
    flags = []
    for flag, which, value, unit in wanted:
        if value is None:
            continue
        if which == resource.RLIMIT_NPROC:
            value += privileges.processes_of(os.getuid())
        hard = resource.getrlimit(which)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        flags.append(f"{flag} {max(value // unit, 1)}")
    if not flags:
        return argv
    script = f'ulimit -S -H {" ".join(flags)} || exit 126; exec "$@"'
    return ["/bin/bash", "-c", script, "m2agent-limits", *argv]


def _remove_created(missing: list[Path]) -> tuple[str, ...]:
    """Commands may not create .git or .m2agent (a planted core.fsmonitor runs on the user's
    next `git status`; a planted config changes the agent): what one created is removed."""
    notes = []
    for path in missing:
        if not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        notes.append(f"{path.name} was created by the command and has been removed: commands "
                     f"may not create {path.name} (protected)")  # fmt: skip
    return tuple(notes)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """TERM the sandbox's top process first (the launcher then kills every descendant; killing
    bwrap ends its PID namespace), then the process group, then KILL after a grace period."""
    try:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            process.wait(timeout=wait_s)
            if sig == signal.SIGKILL:
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
        "fail, .git is read-only, the network is off unless the user allowed it, credentials "
        "(~/.ssh, cloud keys, tokens in the environment) are hidden, and every process the "
        "command started ends with it (no background servers). Output over "
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
        output += "".join(f"\n[{note}]" for note in result.notes)
        meta = {
            "exit_code": result.exit_code,
            "timed_out": result.timed_out,
            "duration_s": result.duration_s,
        }
        if result.timed_out:
            killed = (
                "the command and every process it started were killed"
                if result.contained
                else "the command's process group was killed (the sandbox is off: processes "
                "that left the group may still run)"
            )
            return ToolResult(
                f"{output}\n[timed out after {timeout_s:g}s: {killed}]",
                is_error=True,
                metadata=meta,
            )
        if result.exit_code is None:  # stopped by a limit: the notes say which
            return ToolResult(output, is_error=True, metadata=meta)
        if result.exit_code != 0:
            return ToolResult(
                f"{output}\n[exit code {result.exit_code}]", is_error=True, metadata=meta
            )
        return ToolResult(output, metadata=meta)
