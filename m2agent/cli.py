"""The `m2agent` command line: parses flags and hands off; no logic of its own.

Start-up must stay fast: nothing here imports torch (a test checks it).
"""

from __future__ import annotations

import typer

from m2agent import __version__

app = typer.Typer(
    name="m2agent",
    help=(
        "A terminal coding agent for MiniMax-M2.\n\n"
        "Today this release ships the foundation: the package and MiniMax-M2's exact wire "
        "format (m2agent.engine.protocol). The agent, engine and tools land next; see README."
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"m2agent {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        "-V",
        help="Print the version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """A terminal coding agent for MiniMax-M2."""


def main() -> None:
    app()
