"""Cost of the safety features, on this machine: the sandbox's overhead per command, the cost
of file operations inside it (on the Landlock backend each call that may change a path goes
through the broker), and the time to snapshot a 10,000-file repository after a one-file change
(the undo point taken before every mutating step). Targets: under 15 ms per command, under
200 ms per snapshot.

Usage: python bench/tools_bench.py [--files 10000] [--runs 50] [--churn 5000]
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


# Runs inside the sandbox: times N creations and deletions in FOLDER, and N write-opens of an
# existing file against N read-only opens (which the broker never sees).
_CHURN = """
import os, sys, time
n, folder = int(sys.argv[1]), sys.argv[2]
os.makedirs(folder, exist_ok=True)
started = time.perf_counter()
for i in range(n):
    os.close(os.open(f"{folder}/f{i}", os.O_WRONLY | os.O_CREAT, 0o644))
for i in range(n):
    os.unlink(f"{folder}/f{i}")
churn = time.perf_counter() - started
def opens(flags):
    started = time.perf_counter()
    for _ in range(n):
        os.close(os.open(f"{folder}/probe", flags))
    return time.perf_counter() - started
os.close(os.open(f"{folder}/probe", os.O_WRONLY | os.O_CREAT, 0o644))
extra = (opens(os.O_WRONLY) - opens(os.O_RDONLY)) / n
print(f"{churn * 1e3:.0f} {extra * 1e6:.1f}")
"""


def churn(runner: CommandRunner, folder: str, files: int, runs: int = 5) -> tuple[float, float]:
    """(ms to create and delete `files` files in `folder`, µs a write-open costs more than a
    read-only one), medians, measured inside the sandbox."""
    results = []
    for _ in range(runs):
        command = f"python3 -c '{_CHURN}' {files} {folder} && rm -rf {folder}/probe"
        result = runner.run(command)
        if result.exit_code != 0:
            raise RuntimeError(result.output)
        ms, us = result.output.split()[-2:]
        results.append((float(ms), float(us)))
    return (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results))


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
    parser.add_argument("--churn", type=int, default=5_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        root.mkdir()
        policy = SandboxPolicy.for_workspace(root)
        plain = command_ms(CommandRunner(policy, "off"), args.runs)
        print(f"command `true`, no sandbox:   {plain:7.2f} ms (median of {args.runs})")
        ms, us = churn(CommandRunner(policy, "off"), "existing", args.churn)
        print(f"  {args.churn} files created and deleted, no sandbox: {ms:.0f} ms")
        subprocess.run(["rm", "-rf", str(root / "existing")], check=True)
        for backend, available in (
            ("bwrap", bwrap.probe_bwrap().works),
            ("landlock", landlock.abi_version() >= 1),
        ):
            if not available:
                print(f"{backend}: not available here")
                continue
            runner = CommandRunner(policy, backend)
            boxed = command_ms(runner, args.runs)
            print(f"command `true`, {backend:10} {boxed:7.2f} ms (overhead {boxed - plain:.2f} ms)")
            (root / "existing").mkdir(exist_ok=True)
            for where in ("existing", "new"):
                ms, us = churn(runner, where, args.churn)
                print(
                    f"  {args.churn} files created and deleted in {where} top-level folder: "
                    f"{ms:.0f} ms; a write-open costs {us:.1f} µs more than a read-only one"
                )
            subprocess.run(["rm", "-rf", str(root / "existing")], check=True)

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
