"""`python -m m2agent.tools.sandbox.launcher --workspace W [--network] -- CMD...`: apply the
Landlock + seccomp sandbox to itself, then exec CMD. Exits 126 with the reason when the sandbox
cannot be applied (the command never runs unconfined)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from m2agent.tools.sandbox.landlock import LandlockError, restrict

PROTECTED = (".git", ".m2agent")


def writable_paths(workspace: Path, tmp: Path) -> list[Path]:
    """Every child of the workspace except the protected ones and symlinks (a rule on a link
    would grant its target, possibly outside), and the private temp folder."""
    children = [
        child
        for child in workspace.iterdir()
        if child.name not in PROTECTED and not child.is_symlink()
    ]
    return [*children, tmp]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m2agent-sandbox")
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--tmp", type=Path, required=True)
    parser.add_argument("--network", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    try:
        restrict(writable_paths(args.workspace.resolve(), args.tmp), allow_network=args.network)
    except (LandlockError, OSError) as e:
        print(f"m2agent sandbox: {e}", file=sys.stderr)
        return 126
    os.execvp(command[0], command)
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
