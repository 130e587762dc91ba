"""Cost of the safety features, on this machine: the sandbox's overhead per command, and the
time to snapshot a 10,000-file repository after a one-file change (the undo point taken before
every mutating step). Targets: under 15 ms per command, under 200 ms per snapshot.

Usage: python bench/tools_bench.py [--files 10000] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.sandbox import bwrap, landlock
from m2agent.tools.sandbox.policy import SandboxPolicy
from m2agent.tools.shell import CommandRunner


def command_ms(runner: CommandRunner, runs: int) -> float:
    runner.run("true")
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        runner.run("true")
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def make_repo(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"pkg{i // 100:03d}"
        folder.mkdir(exist_ok=True)
        (folder / f"module_{i:05d}.py").write_text(f"VALUE = {i}\n" * 20)
    subprocess.run(["git", "init", "-q", str(root)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        policy = SandboxPolicy.for_workspace(root)
        plain = command_ms(CommandRunner(policy, "off"), args.runs)
        print(f"command `true`, no sandbox:   {plain:7.2f} ms (median of {args.runs})")
        for backend, available in (
            ("bwrap", bwrap.probe_bwrap().works),
            ("landlock", landlock.abi_version() >= 1),
        ):
            if not available:
                print(f"{backend}: not available here")
                continue
            boxed = command_ms(CommandRunner(policy, backend), args.runs)
            print(f"command `true`, {backend:10} {boxed:7.2f} ms (overhead {boxed - plain:.2f} ms)")

        make_repo(root, args.files)
        checkpoints = Checkpoints(root, Path(tmp) / "store")
        started = time.perf_counter()
        checkpoints.snapshot("first")
        first = (time.perf_counter() - started) * 1e3
        times = []
        for i in range(5):
            (root / "pkg000" / "module_00000.py").write_text(f"VALUE = {i}\n")
            started = time.perf_counter()
            checkpoints.snapshot(f"after change {i}")
            times.append((time.perf_counter() - started) * 1e3)
        print(
            f"snapshot of {args.files} files: first {first:.0f} ms, after a one-file change "
            f"{statistics.median(times):.0f} ms (median of 5)"
        )
        started = time.perf_counter()
        checkpoints.restore(1)
        print(f"restore to the first snapshot: {(time.perf_counter() - started) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
