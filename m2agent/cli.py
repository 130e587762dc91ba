"""The `m2agent` command line: parses flags and hands off; no logic of its own.

Start-up must stay fast: nothing here imports torch at module level (a test checks it); the
engine is imported inside the commands that need it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from m2agent import __version__

app = typer.Typer(
    name="m2agent",
    help=(
        "A terminal coding agent for MiniMax-M2.\n\n"
        "`m2agent fix ISSUE --endpoint URL --model NAME` fixes an issue headlessly and verifies "
        "it; `m2agent undo` takes the changes back; `m2agent serve` runs the embedded engine. "
        "The interactive REPL is not there yet; see README."
    ),
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(
    help="Benchmarks of the embedded engine against a named baseline, on this machine.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


EngineTpOption = Annotated[
    int | None,
    typer.Option("--tp", min=1, help="Embedded engine: split the model over N GPUs."),
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"m2agent {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", "-V", help="Print the version and exit.", callback=_print_version,
            is_eager=True,
        ),
    ] = False,
    prompt: Annotated[
        str | None, typer.Option("--print", "-p", help="Run one task headless, like `fix`.")
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (…/v1).")] = None,
    api: Annotated[str | None, typer.Option(help="openai, completions or anthropic.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name, or a local checkpoint.")] = None,
    tp: EngineTpOption = None,
    mode: Annotated[
        str | None, typer.Option(help="Approvals: read-only, ask, auto-edit or auto.")
    ] = None,
    sandbox: Annotated[str | None, typer.Option(help="auto, bwrap, landlock or off.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Headless: one JSON result.")] = False,
    output_format: Annotated[
        str, typer.Option(help="Headless: text, json or stream-json.")
    ] = "text",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Headless: approve everything.")] = False,
) -> None:  # fmt: skip
    """A terminal coding agent for MiniMax-M2. With no command: the interactive REPL (or one
    headless task with -p, or when stdin is not a terminal)."""
    if ctx.invoked_subcommand is not None:
        return
    from m2agent.errors import M2AgentError
    from m2agent.settings import load_settings

    workspace = Path.cwd()
    flags = {"endpoint": endpoint, "api": api, "model": model, "sandbox": sandbox,
             "approval_mode": mode, "tp": tp}  # fmt: skip
    try:
        settings = load_settings(workspace, flags)
        if prompt is not None or not sys.stdin.isatty():
            from m2agent.fix import result_json, run_fix

            task = prompt if prompt is not None else sys.stdin.read()
            fmt = "json" if json_output else output_format
            if fmt not in ("text", "json", "stream-json"):
                raise typer.BadParameter("--output-format must be text, json or stream-json")
            result = run_fix(
                settings, workspace, task, test_cmd=None, yes=yes, output=fmt,  # type: ignore[arg-type]
            )  # fmt: skip
            if fmt == "text":
                typer.echo(result.answer)
            else:
                typer.echo(result_json(result, one_line=fmt == "stream-json"))
            raise typer.Exit(result.exit_code)
        from rich.console import Console

        from m2agent.fix import make_backend
        from m2agent.ui.repl import Repl

        console = Console()
        backend = make_backend(settings, console.print, background=True)
        repl = Repl(settings, workspace, backend, console)
        code = repl.run()
    except M2AgentError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    raise typer.Exit(code)


@app.command("fix")
def fix(
    issue: Annotated[str, typer.Argument(help="The issue: text, or @file to read it from a file.")],
    endpoint: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL of an M2 server (…/v1).")
    ] = None,
    api: Annotated[
        str | None,
        typer.Option(
            help="openai (chat completions), completions (m2agent renders the prompt) or "
            "anthropic (Messages API)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model name on that server, or a local checkpoint folder (embedded)."),
    ] = None,
    tp: EngineTpOption = None,
    api_key: Annotated[str | None, typer.Option(help="API key (default: M2AGENT_API_KEY).")] = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Approve every tool call (inside the sandbox).")
    ] = False,
    test_cmd: Annotated[
        str | None, typer.Option(help="Command that verifies the fix (default: detected).")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Model turns at most.")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Tokens per model turn at most (default 8192).")
    ] = None,
    max_total_tokens: Annotated[
        int | None, typer.Option(min=1, help="Tokens the model may generate for the whole task.")
    ] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0.1, help="Wall time at most.")] = None,
    sandbox: Annotated[
        str | None, typer.Option(help="auto, bwrap, landlock, or off (only when already isolated).")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON result at the end.")
    ] = False,
    output_format: Annotated[
        str, typer.Option(help="text, json, or stream-json (one JSON event per line).")
    ] = "text",
    branch: Annotated[
        str | None, typer.Option(help="With --commit: the new branch to commit the fix on.")
    ] = None,
    commit: Annotated[
        bool,
        typer.Option("--commit", help="Commit a verified fix on --branch (never the current)."),
    ] = False,
    resume: Annotated[
        str | None, typer.Option(help="Continue session ID (see `m2agent sessions`).")
    ] = None,
    continue_last: Annotated[
        bool, typer.Option("--continue", help="Continue the latest session of this workspace.")
    ] = False,
) -> None:
    """Fix an issue headlessly and verify it with the project's tests.

    ISSUE is text, @file, a GitHub issue URL, or #N (with a GitHub remote; GITHUB_TOKEN and
    GITHUB_API_URL are honoured).

    Exit codes: 0 fixed and verified, 1 not fixed, 2 usage error, 3 sandbox unavailable,
    4 model or endpoint error, 130 interrupted.
    """
    from m2agent.errors import M2AgentError
    from m2agent.fix import result_json, run_fix
    from m2agent.settings import load_settings

    fmt = "json" if json_output else output_format
    if fmt not in ("text", "json", "stream-json"):
        raise typer.BadParameter("--output-format must be text, json or stream-json")
    if commit and not branch:
        raise typer.BadParameter("--commit needs --branch NAME (a new branch)")
    workspace = Path.cwd()
    flags = {
        "endpoint": endpoint, "api": api, "model": model, "api_key": api_key, "tp": tp,
        "max_steps": max_steps, "max_minutes": max_minutes, "sandbox": sandbox,
        "max_tokens": max_tokens, "max_total_tokens": max_total_tokens,
    }  # fmt: skip
    try:
        settings = load_settings(workspace, flags)
        result = run_fix(
            settings, workspace, issue, test_cmd=test_cmd, yes=yes, output=fmt,  # type: ignore[arg-type]
            resume=resume, continue_last=continue_last,
        )  # fmt: skip
        if commit and branch and result.status == "fixed":
            from m2agent.git_ops import commit_on_new_branch

            title = issue.splitlines()[0][:72] if not issue.startswith("@") else issue
            sha = commit_on_new_branch(
                workspace, branch, result.files_changed, f"m2agent: {title}\n\n{result.answer}"
            )
            typer.echo(f"committed {sha[:12]} on {branch}", err=True)
        elif commit:
            typer.echo("not committed: the fix was not verified", err=True)
    except M2AgentError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    if fmt == "text":
        verdict = "fixed and verified" if result.verified else result.status.replace("_", " ")
        typer.echo(f"{verdict}: {', '.join(result.files_changed) or 'no files changed'}")
        typer.echo(f"session {result.session}; undo with: m2agent undo")
    else:
        typer.echo(result_json(result, one_line=fmt == "stream-json"))
    raise typer.Exit(result.exit_code)


@app.command("ci")
def ci(
    test_cmd: Annotated[
        str | None, typer.Option(help="The test command (default: detected).")
    ] = None,
    endpoint: Annotated[str | None, typer.Option(help="Model endpoint (…/v1).")] = None,
    api: Annotated[str | None, typer.Option(help="openai, completions or anthropic.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name, or a local checkpoint.")] = None,
    tp: EngineTpOption = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Model turns at most.")] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0.1, help="Wall time at most.")] = None,
    patch: Annotated[Path, typer.Option(help="Where to write the fix as a patch.")] = Path(
        "m2agent-fix.patch"
    ),
    report: Annotated[Path | None, typer.Option(help="Write a JSON report here.")] = None,
    summary: Annotated[
        Path | None, typer.Option(help="Write a Markdown summary (a PR body) here.")
    ] = None,
    branch: Annotated[str | None, typer.Option(help="With --commit: a new branch.")] = None,
    commit: Annotated[bool, typer.Option("--commit", help="Commit the fix on --branch.")] = False,
    push: Annotated[bool, typer.Option("--push", help="Push --branch to origin.")] = False,
    pr: Annotated[
        bool,
        typer.Option("--pr", help="Open (or update) a pull request, and comment on the commit."),
    ] = False,
    allow_fork: Annotated[
        bool, typer.Option("--allow-fork", help="Push even for a fork's (untrusted) pull request.")
    ] = False,
) -> None:
    """Run the tests; if they fail, fix them, verify, and write a patch and a report.

    Exit codes: 0 green (already, or after the fix), 1 could not fix, 2 usage error,
    3 sandbox unavailable, 4 model or endpoint error. Headless: no prompts.
    """
    from m2agent.ci_job import publish_fix, run_ci
    from m2agent.errors import M2AgentError
    from m2agent.settings import load_settings

    if (commit or push or pr) and not branch:
        raise typer.BadParameter("--commit, --push and --pr need --branch NAME (a new branch)")
    commit = commit or push or pr
    workspace = Path.cwd()
    flags = {"endpoint": endpoint, "api": api, "model": model, "max_steps": max_steps,
             "max_minutes": max_minutes, "tp": tp}  # fmt: skip
    try:
        settings = load_settings(workspace, flags)
        result = run_ci(
            settings, workspace, test_cmd=test_cmd, patch_path=patch, report_path=report,
            summary_path=summary, output="text",
        )  # fmt: skip
        if commit and branch and result.status == "fixed":
            url = publish_fix(
                settings, workspace, result, branch, push=push, pr=pr, allow_fork=allow_fork
            )
            if url:
                typer.echo(f"pull request: {url}")
    except M2AgentError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    if result.status == "green":
        typer.echo(f"nothing to fix: `{result.test_command}` passes")
    else:
        typer.echo(f"{result.status.replace('_', ' ')}: {', '.join(result.files) or 'no files'}")
    raise typer.Exit(result.exit_code)


@app.command("undo")
def undo(
    to: Annotated[int | None, typer.Option("--to", help="Snapshot number to go back to.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Restore the workspace to before the last session's changes (or to a snapshot)."""
    from m2agent.agent.session import list_sessions
    from m2agent.errors import M2AgentError
    from m2agent.settings import load_settings
    from m2agent.tools.checkpoints import Checkpoints

    workspace = Path.cwd()
    try:
        settings = load_settings(workspace, {})
        project = settings.project_dir(workspace)
        checkpoints = Checkpoints(workspace, project / "snapshots.git")
        target = to
        if target is None:
            sessions = [
                s for s in list_sessions(project / "sessions") if s.first_snapshot is not None
            ]
            if not sessions:
                typer.echo("nothing to undo: no session changed this workspace", err=True)
                raise typer.Exit(1)
            target = sessions[-1].first_snapshot
            typer.echo(f"undoing session {sessions[-1].id}: {sessions[-1].task[:80]!r}")
        assert target is not None
        if not yes:
            if not sys.stdin.isatty():
                raise typer.BadParameter("pass --yes to undo without a terminal")
            if not typer.confirm(f"Restore the workspace to snapshot {target}?"):
                raise typer.Exit(1)
        snapshot = checkpoints.restore(target)
    except M2AgentError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    except RuntimeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored snapshot {snapshot.number} ({snapshot.label})")


@app.command("doctor")
def doctor(
    endpoint: Annotated[str | None, typer.Option(help="Endpoint to check.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name or local checkpoint.")] = None,
    tp: EngineTpOption = None,
) -> None:
    """Check Python, git, the sandbox, the model endpoint (and its reasoning style) and the
    engine; say how to fix what is missing. Exits 1 when something needed is missing."""
    from m2agent.doctor import render, run_checks
    from m2agent.errors import M2AgentError
    from m2agent.settings import load_settings

    workspace = Path.cwd()
    try:
        settings = load_settings(workspace, {"endpoint": endpoint, "model": model, "tp": tp})
    except M2AgentError as e:
        typer.echo(f"[MISSING] config: {e.message}")
        raise typer.Exit(1) from None
    checks = run_checks(settings, workspace)
    typer.echo(render(checks))
    raise typer.Exit(0 if all(c.ok or not c.needed for c in checks) else 1)


@app.command("sessions")
def sessions() -> None:
    """List this workspace's sessions (newest last)."""
    from m2agent.agent.session import list_sessions
    from m2agent.settings import load_settings

    workspace = Path.cwd()
    project = load_settings(workspace, {}).project_dir(workspace)
    found = list_sessions(project / "sessions")
    if not found:
        typer.echo("no sessions in this workspace yet")
    for s in found:
        snap = f"undo point {s.first_snapshot}" if s.first_snapshot is not None else "no changes"
        typer.echo(f"{s.id}  {snap:16}  {s.task.splitlines()[0][:70] if s.task else ''}")


@app.command(
    "serve",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def serve(ctx: typer.Context) -> None:
    """Serve MiniMax-M2 with an OpenAI-compatible API (see `m2agent serve --help`)."""
    from m2agent.engine.server.__main__ import main as serve_main

    raise typer.Exit(serve_main(list(ctx.args)))


ModelOption = Annotated[
    Path | None, typer.Option("--model", help="A MiniMax-M2 checkpoint folder (real weights).")
]
DummyOption = Annotated[
    str | None,
    typer.Option(
        "--dummy-config",
        help=(
            "A MiniMax-M2 config.json, or 'minimax-m2' for the published one: random bf16 "
            "weights of the real shapes, no download."
        ),
    ),
]
LayersOption = Annotated[
    int, typer.Option(min=1, help="Decoder layers to keep (with --dummy-config).")
]
DeviceOption = Annotated[str, typer.Option(help="cuda or cpu.")]
BaselineOption = Annotated[
    bool,
    typer.Option("--baseline/--no-baseline", help="Also time transformers on the same weights."),
]
ExpertsOption = Annotated[
    str, typer.Option(help="transformers' experts implementation for the baseline.")
]
JsonOption = Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON.")]
TpOption = Annotated[
    int,
    typer.Option(
        "--tp", min=1, help="Tensor-parallel size: GPUs the model is split over (one process each)."
    ),
]

EpOption = Annotated[
    int | None,
    typer.Option(
        "--ep",
        min=1,
        help="Expert-parallel size: groups of GPUs the experts are spread over (whole experts; "
        "attention stays split over --tp, which defaults to this). Default: the layout for "
        "the model and GPU count.",
    ),
]


def _ranks(tp: int, ep: int | None) -> int:
    """GPUs used: --tp, or --ep alone."""
    return ep if tp == 1 and ep is not None else tp


def _run_bench(
    model: Path | None, dummy_config: str | None, run: Any, json_out: Path | None
) -> None:
    """Shared plumbing of the bench commands: the model source, errors, output."""
    if (model is None) == (dummy_config is None):
        raise typer.BadParameter("pass exactly one of --model PATH or --dummy-config CONFIG.json")
    from m2agent.engine.bench.common import resolve_config
    from m2agent.engine.errors import EngineError

    try:
        config = resolve_config(dummy_config) if dummy_config else None
        report = run(config, lambda line: typer.echo(line, err=True))
    except EngineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.table())
    if json_out is not None:
        json_out.write_text(report.to_json() + "\n", encoding="utf-8")


@bench_app.command("latency")
def bench_latency(
    model: ModelOption = None,
    dummy_config: DummyOption = None,
    layers: LayersOption = 4,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Prompt length in tokens.")] = 512,
    new_tokens: Annotated[int, typer.Option(min=2, help="Tokens to generate per run.")] = 128,
    device: DeviceOption = "cuda",
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed runs per engine (median reported).")
    ] = 5,
    baseline: BaselineOption = True,
    experts_impl: ExpertsOption = "grouped_mm",
    profile: Annotated[
        bool, typer.Option(help="Also print the CUDA kernels of a few decode steps.")
    ] = False,
    tp: TpOption = 1,
    ep: EpOption = None,
    json_out: JsonOption = None,
) -> None:
    """Batch-1 decode tok/s and time to first token, against transformers and the bandwidth
    bound of the same config. With --tp N the baseline is our engine on one GPU."""
    from m2agent.engine.bench.latency import run_latency_bench

    def run(config: Path | None, report: Any) -> Any:
        return run_latency_bench(
            model_path=model, dummy_config=config, layers=layers, prompt_tokens=prompt_tokens,
            new_tokens=new_tokens, device=device, repeats=repeats, baseline=baseline,
            experts_impl=experts_impl, profile=profile, tp=_ranks(tp, ep), ep=ep, report=report,
        )  # fmt: skip

    _run_bench(model, dummy_config, run, json_out)


@bench_app.command("throughput")
def bench_throughput(
    model: ModelOption = None,
    dummy_config: DummyOption = None,
    layers: LayersOption = 4,
    streams: Annotated[str, typer.Option(help="Comma-separated stream counts.")] = "1,4,16",
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Prompt length per stream.")] = 512,
    new_tokens: Annotated[int, typer.Option(min=2, help="Tokens per stream.")] = 128,
    device: DeviceOption = "cuda",
    baseline: BaselineOption = True,
    experts_impl: ExpertsOption = "grouped_mm",
    tp: TpOption = 1,
    ep: EpOption = None,
    json_out: JsonOption = None,
) -> None:
    """Output tok/s with N concurrent streams, against transformers batching the same prompts
    (no baseline with --tp N > 1: compare with a --tp 1 run)."""
    from m2agent.engine.bench.throughput import run_throughput_bench

    try:
        counts = [int(n) for n in streams.split(",")]
    except ValueError:
        raise typer.BadParameter(
            f"--streams must be integers like 1,4,16, got {streams!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise typer.BadParameter("--streams needs positive integers")

    def run(config: Path | None, report: Any) -> Any:
        return run_throughput_bench(
            model_path=model, dummy_config=config, layers=layers, streams=counts,
            prompt_tokens=prompt_tokens, new_tokens=new_tokens, device=device, baseline=baseline,
            experts_impl=experts_impl, tp=_ranks(tp, ep), ep=ep, report=report,
        )  # fmt: skip

    _run_bench(model, dummy_config, run, json_out)


@bench_app.command("agent")
def bench_agent(
    model: ModelOption = None,
    dummy_config: DummyOption = None,
    layers: LayersOption = 4,
    prefix_tokens: Annotated[
        int, typer.Option(min=1, help="The cached conversation so far, in tokens.")
    ] = 16384,
    new_tokens: Annotated[int, typer.Option(min=1, help="New prompt tokens of the turn.")] = 512,
    device: DeviceOption = "cuda",
    repeats: Annotated[int, typer.Option(min=1, help="Cold/cached pairs (median).")] = 3,
    tp: TpOption = 1,
    ep: EpOption = None,
    json_out: JsonOption = None,
) -> None:
    """Time to first token of an agent turn with its prefix cached, against a cold cache."""
    from m2agent.engine.bench.agent import run_agent_bench

    def run(config: Path | None, report: Any) -> Any:
        return run_agent_bench(
            model_path=model, dummy_config=config, layers=layers, prefix_tokens=prefix_tokens,
            new_tokens=new_tokens, device=device, repeats=repeats, tp=_ranks(tp, ep), ep=ep,
            report=report,
        )  # fmt: skip

    _run_bench(model, dummy_config, run, json_out)


@bench_app.command("capacity")
def bench_capacity(
    config: Annotated[
        str, typer.Option(help="A config.json, or 'minimax-m2' for the published one.")
    ] = "minimax-m2",
    gpus: Annotated[str, typer.Option(help="Comma-separated GPU counts.")] = "2,4,8",
    gpu_memory_gib: Annotated[
        float, typer.Option(min=1, help="Memory of one GPU (H200: 140.4, H100: 79.6).")
    ] = 140.4,
    utilization: Annotated[
        float, typer.Option(min=0.1, max=1.0, help="Share of each GPU the engine may fill.")
    ] = 0.90,
    reserve_gib: Annotated[
        float, typer.Option(min=0, help="Per GPU, kept for activations and graphs.")
    ] = 4.0,
    json_out: JsonOption = None,
) -> None:
    """Tokens of KV cache that fit beside the weights for each GPU count (at full depth, the
    default layout), computed from the config: no GPU needed."""
    from m2agent.engine.bench.capacity import GIB, capacity_report
    from m2agent.engine.bench.common import resolve_config
    from m2agent.engine.errors import EngineError
    from m2agent.engine.model_config import load_model_config

    try:
        counts = [int(n) for n in gpus.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--gpus must be integers like 2,4,8, got {gpus!r}") from None
    try:
        model_config = load_model_config(resolve_config(config))
        report = capacity_report(
            model_config, counts, int(gpu_memory_gib * GIB), utilization, int(reserve_gib * GIB)
        )
    except EngineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.table())
    if json_out is not None:
        json_out.write_text(report.to_json() + "\n", encoding="utf-8")


def main() -> None:
    app(prog_name="m2agent")
