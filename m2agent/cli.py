"""The `m2agent` command line: parses flags and hands off; no logic of its own.

Start-up must stay fast: nothing here imports torch at module level (a test checks it); the
engine is imported inside the commands that need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from m2agent import __version__

app = typer.Typer(
    name="m2agent",
    help=(
        "A terminal coding agent for MiniMax-M2.\n\n"
        "This release ships the foundation: MiniMax-M2's exact wire format "
        "(m2agent.engine.protocol), the inference engine core (m2agent.engine.LLM) and its "
        "benchmark. The agent, server and tools land next; see README."
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(
    help="Benchmarks of the embedded engine against a named baseline, on this machine.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"m2agent {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", help="Print the version and exit.", callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:  # fmt: skip
    """A terminal coding agent for MiniMax-M2."""


@app.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serve MiniMax-M2 with an OpenAI-compatible API (see `m2agent serve --help`)."""
    from m2agent.engine.server.__main__ import main as serve_main

    raise typer.Exit(serve_main(list(ctx.args)))


@bench_app.command("latency")
def bench_latency(
    model: Annotated[
        Path | None, typer.Option("--model", help="A MiniMax-M2 checkpoint folder (real weights).")
    ] = None,
    dummy_config: Annotated[
        str | None,
        typer.Option(
            "--dummy-config",
            help=(
                "A MiniMax-M2 config.json, or 'minimax-m2' for the published one: random bf16 "
                "weights of the real shapes, no download."
            ),
        ),
    ] = None,
    layers: Annotated[
        int, typer.Option(min=1, help="Decoder layers to keep (with --dummy-config).")
    ] = 4,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Prompt length in tokens.")] = 512,
    new_tokens: Annotated[int, typer.Option(min=2, help="Tokens to generate per run.")] = 128,
    device: Annotated[str, typer.Option(help="cuda or cpu.")] = "cuda",
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed runs per engine (median reported).")
    ] = 5,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline/--no-baseline", help="Also time transformers on the same weights."
        ),
    ] = True,
    experts_impl: Annotated[
        str, typer.Option(help="transformers' experts implementation for the baseline.")
    ] = "grouped_mm",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the report as JSON.")
    ] = None,
) -> None:
    """Batch-1 decode tok/s and time to first token, against transformers and the bandwidth
    bound of the same config."""
    if (model is None) == (dummy_config is None):
        raise typer.BadParameter("pass exactly one of --model PATH or --dummy-config CONFIG.json")
    from m2agent.engine.bench.latency import resolve_config, run_latency_bench
    from m2agent.engine.errors import EngineError

    try:
        report = run_latency_bench(
            model_path=model,
            dummy_config=resolve_config(dummy_config) if dummy_config else None,
            layers=layers,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            device=device,
            repeats=repeats,
            baseline=baseline,
            experts_impl=experts_impl,
            report=lambda line: typer.echo(line, err=True),
        )
    except EngineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.table())
    if json_out is not None:
        json_out.write_text(report.to_json() + "\n", encoding="utf-8")


def main() -> None:
    app(prog_name="m2agent")
