"""The `m2agent` command line: parses flags and hands off; no logic of its own.

Start-up must stay fast: nothing here imports torch at module level (a test checks it); the
engine is imported inside the commands that need it.
"""

from __future__ import annotations

import sys
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from m2agent import __version__

ROOT_HELP = """A terminal coding agent for MiniMax-M2.

With no command, `m2agent` opens the interactive REPL in the current repository: type a task,
watch the model reason and use tools (every change is previewed before you approve it with one
key: y, n, a for always, m for auto mode), `/undo` what a message changed, `/help` for the
slash commands, Ctrl-C to cancel a turn, Ctrl-D to leave. `-p TASK` (or piped stdin) runs one
task headless.

Model: `--endpoint URL --model NAME` for any OpenAI-compatible or Anthropic-compatible server,
or `--model PATH` to a MiniMax-M2 checkpoint for the embedded engine (found by itself in the
Hugging Face cache when nothing is configured).

Other commands: `fix` an issue and verify it with the tests, `ci` to repair a failing suite,
`undo`, `sessions`, `doctor`, `mcp` servers, `serve` the embedded engine, `bench`."""


class ModeChoice(StrEnum):
    read_only = "read-only"
    ask = "ask"
    auto_edit = "auto-edit"
    auto = "auto"


class ApiChoice(StrEnum):
    openai = "openai"
    completions = "completions"
    anthropic = "anthropic"


class SandboxChoice(StrEnum):
    auto = "auto"
    bwrap = "bwrap"
    landlock = "landlock"
    off = "off"


class FormatChoice(StrEnum):
    text = "text"
    json = "json"
    stream_json = "stream-json"


class InputFormatChoice(StrEnum):
    text = "text"
    stream_json = "stream-json"


def _value(choice: Enum | None) -> Any:
    return None if choice is None else choice.value


app = typer.Typer(
    name="m2agent",
    help=ROOT_HELP,
    add_completion=True,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
bench_app = typer.Typer(
    help="Benchmarks of the embedded engine against a named baseline, on this machine.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")
mcp_app = typer.Typer(
    help="MCP servers: list them (and check they start), approve a project's .mcp.json servers.",
    no_args_is_help=True,
)
app.add_typer(mcp_app, name="mcp")


EngineTpOption = Annotated[
    int | None,
    typer.Option("--tp", min=1, help="Embedded engine: split the model over N GPUs."),
]
EndpointOption = Annotated[
    str | None,
    typer.Option(help="Base URL of an OpenAI- or Anthropic-compatible M2 server (http://…/v1)."),
]
ApiOption = Annotated[
    ApiChoice | None,
    typer.Option(
        help="openai (chat completions), completions (m2agent renders the prompt) or anthropic "
        "(Messages API)."
    ),
]
ModelNameOption = Annotated[
    str | None,
    typer.Option(help="Model name on that server, or a local checkpoint folder (embedded)."),
]
SandboxOption = Annotated[
    SandboxChoice | None,
    typer.Option(help="How commands are confined; off only inside an already isolated machine."),
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
        str | None,
        typer.Option("--print", "-p", help="Run one task headless and print the answer."),
    ] = None,
    endpoint: EndpointOption = None,
    api: ApiOption = None,
    model: ModelNameOption = None,
    tp: EngineTpOption = None,
    mode: Annotated[
        ModeChoice | None,
        typer.Option(help="Approvals: read-only, ask (every change), auto-edit or auto."),
    ] = None,
    sandbox: SandboxOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Headless: one JSON result.")] = False,
    output_format: Annotated[
        FormatChoice,
        typer.Option(help="Headless: text, json (the result object) or stream-json (Claude "
                     "Code's events, one per line)."),
    ] = FormatChoice.text,
    input_format: Annotated[
        InputFormatChoice,
        typer.Option(help="Headless: text, or stream-json (user turns as JSON lines on stdin)."),
    ] = InputFormatChoice.text,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Headless: approve everything.")] = False,
) -> None:  # fmt: skip
    if ctx.invoked_subcommand is not None:
        return
    from m2agent.errors import M2AgentError, UsageError
    from m2agent.settings import load_settings

    workspace = Path.cwd()
    flags = {"endpoint": endpoint, "api": _value(api), "model": model,
             "sandbox": _value(sandbox), "approval_mode": _value(mode), "tp": tp}  # fmt: skip
    fmt = "json" if json_output else output_format.value
    if input_format == InputFormatChoice.stream_json:
        _stream_turns(workspace, flags, fmt=fmt, yes=yes, flat_json=json_output)
    if prompt is not None or not sys.stdin.isatty():
        task = prompt if prompt is not None else sys.stdin.read()
        _headless(workspace, flags, task, fmt=fmt, yes=yes, question=True, flat_json=json_output)
    try:
        settings = load_settings(workspace, flags)
        from rich.console import Console

        from m2agent.runtime import NO_MODEL, build_backend
        from m2agent.ui.repl import Repl

        console = Console()
        try:
            backend = build_backend(settings, console.print, background=True)
        except UsageError as e:  # the REPL starts anyway and says how to set a model
            backend = None
            if e.message != NO_MODEL:  # e.g. weights found that cannot be served here
                console.print(e.message, style="yellow", markup=False)
        code = Repl(settings, workspace, backend, console).run()
    except M2AgentError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    raise typer.Exit(code)


def _headless(
    workspace: Path,
    flags: dict[str, Any],
    task: str,
    *,
    fmt: str,
    yes: bool,
    question: bool,
    test_cmd: str | None = None,
    resume: str | None = None,
    continue_last: bool = False,
    commit_branch: str | None = None,
    issue: str = "",
    flat_json: bool = False,
) -> None:
    """One task as `fix`/`-p` run it; exits with its code. With json/stream-json the last
    line is a JSON result on every outcome, errors included (`flat_json`: m2agent's own
    result object, for `--json`; otherwise Claude Code's)."""
    from m2agent.errors import M2AgentError
    from m2agent.fix import run_fix
    from m2agent.issue_source import resolve_task
    from m2agent.settings import load_settings
    from m2agent.ui.headless import HeadlessFrontEnd

    if fmt not in ("text", "json", "stream-json"):
        raise typer.BadParameter("--output-format must be text, json or stream-json")
    front = HeadlessFrontEnd(fmt, interactive=not yes and sys.stdin.isatty())  # type: ignore[arg-type]
    try:
        settings = load_settings(workspace, flags)
        text = resolve_task(task, workspace, settings)
        mode = "auto" if yes else settings.approval_mode
        result = run_fix(
            settings, workspace, text, sink=front, mode=mode, test_cmd=test_cmd, resume=resume,
            continue_last=continue_last, question=question,
        )  # fmt: skip
        if commit_branch and result.status == "fixed":
            from m2agent.git_ops import commit_on_new_branch

            title = issue.splitlines()[0][:72] if not issue.startswith("@") else issue
            sha = commit_on_new_branch(
                workspace, commit_branch, result.files_changed,
                f"m2agent: {title}\n\n{result.answer}",
            )  # fmt: skip
            typer.echo(f"committed {sha[:12]} on {commit_branch}", err=True)
        elif commit_branch:
            typer.echo(f"not committed: {result.reason}", err=True)
    except (M2AgentError, KeyboardInterrupt) as e:
        message, code = (e.message, e.exit_code) if isinstance(e, M2AgentError) else (
            "interrupted", 130)  # fmt: skip
        typer.echo(f"error: {message}", err=True)
        front.fail(message, code, flat_json=flat_json)
        raise typer.Exit(code) from None
    if fmt != "text":
        front.finish(result, flat_json=flat_json)
    elif question and result.status == "answered":
        typer.echo(result.answer)
    else:
        if result.answer:
            typer.echo(result.answer)
        files = ", ".join(result.files_changed) or "no files changed"
        typer.echo(f"{result.status.replace('_', ' ')}: {result.reason} ({files})", err=True)
        if result.undo_point is not None:
            typer.echo(f"session {result.session}; undo with: m2agent undo", err=True)
    raise typer.Exit(result.exit_code)


@app.command("fix")
def fix(
    issue: Annotated[str, typer.Argument(help="The issue: text, or @file to read it from a file.")],
    endpoint: EndpointOption = None,
    api: ApiOption = None,
    model: ModelNameOption = None,
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
    sandbox: SandboxOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON result at the end.")
    ] = False,
    output_format: Annotated[
        FormatChoice, typer.Option(help="text, json, or stream-json (one JSON event per line).")
    ] = FormatChoice.text,
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

    Exit codes: 0 fixed (files changed and the test command passed afterwards), 1 not fixed
    (tests still fail, a budget ran out, or nothing changed), 5 changed but unverified (no test
    command found: pass --test-cmd), 2 usage error, 3 sandbox unavailable, 4 model or endpoint
    error, 130 interrupted. With --json or stream-json the last line is a JSON result on every
    outcome, errors included.
    """
    fmt = "json" if json_output else output_format.value
    if commit and not branch:
        raise typer.BadParameter("--commit needs --branch NAME (a new branch)")
    flags = {
        "endpoint": endpoint, "api": _value(api), "model": model, "api_key": api_key, "tp": tp,
        "max_steps": max_steps, "max_minutes": max_minutes, "sandbox": _value(sandbox),
        "max_tokens": max_tokens, "max_total_tokens": max_total_tokens,
    }  # fmt: skip
    _headless(
        Path.cwd(), flags, issue, fmt=fmt, yes=yes, question=False, test_cmd=test_cmd,
        resume=resume, continue_last=continue_last, commit_branch=branch if commit else None,
        issue=issue, flat_json=json_output,
    )  # fmt: skip


def _stream_turns(
    workspace: Path, flags: dict[str, Any], *, fmt: str, yes: bool, flat_json: bool
) -> None:
    """`--input-format stream-json`: each JSON line on stdin is the next user turn of one
    session; a result follows each turn; MCP servers stay up between turns. Exits with the
    last turn's code (2 for a bad input line)."""
    from m2agent.errors import M2AgentError
    from m2agent.fix import open_runtime, run_fix
    from m2agent.settings import load_settings
    from m2agent.stream_json import InputError, read_user_turns
    from m2agent.ui.headless import HeadlessFrontEnd

    front = HeadlessFrontEnd(fmt, interactive=False)  # type: ignore[arg-type]
    code, session = 0, None
    try:
        settings = load_settings(workspace, flags)
        mode = "auto" if yes else settings.approval_mode
        runtime = open_runtime(settings, workspace, mode, front)
        try:
            for task in read_user_turns(sys.stdin):
                result = run_fix(
                    settings, workspace, task, sink=front, mode=mode, resume=session,
                    question=True, runtime=runtime,
                )  # fmt: skip
                session, code = result.session, result.exit_code
                if fmt == "text":
                    typer.echo(result.answer)
                else:
                    front.finish(result, flat_json=flat_json)
        finally:
            runtime.close()
    except InputError as e:
        typer.echo(f"error: {e}", err=True)
        front.fail(str(e), 2, flat_json=flat_json)
        raise typer.Exit(2) from None
    except (M2AgentError, KeyboardInterrupt) as e:
        message, code = (e.message, e.exit_code) if isinstance(e, M2AgentError) else (
            "interrupted", 130)  # fmt: skip
        typer.echo(f"error: {message}", err=True)
        front.fail(message, code, flat_json=flat_json)
        raise typer.Exit(code) from None
    raise typer.Exit(code)


@app.command("ci")
def ci(
    test_cmd: Annotated[
        str | None, typer.Option(help="The test command (default: detected).")
    ] = None,
    endpoint: EndpointOption = None,
    api: ApiOption = None,
    model: ModelNameOption = None,
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
    from m2agent.ui.headless import HeadlessFrontEnd

    if (commit or push or pr) and not branch:
        raise typer.BadParameter("--commit, --push and --pr need --branch NAME (a new branch)")
    commit = commit or push or pr
    workspace = Path.cwd()
    flags = {"endpoint": endpoint, "api": _value(api), "model": model, "max_steps": max_steps,
             "max_minutes": max_minutes, "tp": tp}  # fmt: skip
    try:
        settings = load_settings(workspace, flags)
        result = run_ci(
            settings, workspace, test_cmd=test_cmd, patch_path=patch, report_path=report,
            summary_path=summary, sink=HeadlessFrontEnd("text"),
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
    to: Annotated[
        int | None, typer.Option("--to", help="Undo point to go back to (see `m2agent sessions`).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Undo what the last task changed (again: the one before).

    The last user turn that changed files, in the latest session that has one, is reverted
    to the snapshot taken before its first change. --to N goes back to undo point N. With
    nothing to undo it says so and exits 0."""
    from m2agent.agent.session import Session, list_sessions
    from m2agent.errors import M2AgentError
    from m2agent.runtime import checkpoints_of
    from m2agent.settings import load_settings
    from m2agent.tools.checkpoints import CheckpointError

    workspace = Path.cwd()
    try:
        settings = load_settings(workspace, {})
        project = settings.project_dir(workspace)
        checkpoints = checkpoints_of(settings, workspace)
        session, turn, target = None, None, to
        if target is None:
            found = [s for s in list_sessions(project / "sessions") if s.undo_points]
            if not found:
                typer.echo("nothing to undo: no task has changed this workspace")
                return
            session = Session.read(found[-1].path)
            turn = session.last_undo_point()
            assert turn is not None and turn.snapshot is not None
            target = turn.snapshot
            typer.echo(f"undoing {turn.title[:80]!r} (session {session.id})")
        if not yes:
            if not sys.stdin.isatty():
                raise typer.BadParameter("pass --yes to undo without a terminal")
            if not typer.confirm(f"Restore the workspace to undo point {target}?"):
                typer.echo("not undone")
                return
        snapshot = checkpoints.restore(target)
        if session is not None and turn is not None:
            with session:
                session.mark_undone(turn)
    except M2AgentError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    except CheckpointError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored undo point {snapshot.number} ({snapshot.label})")


@app.command("doctor")
def doctor(
    endpoint: Annotated[str | None, typer.Option(help="Endpoint to check.")] = None,
    model: Annotated[str | None, typer.Option(help="Model name or local checkpoint.")] = None,
    tp: EngineTpOption = None,
) -> None:
    """Check what the agent needs and say how to fix what is missing.

    Python, git, the sandbox, the model endpoint (and its reasoning style) and the engine.
    Exits 1 when something needed is missing."""
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
    """List this workspace's sessions (newest last) with their undo points."""
    from m2agent.agent.session import list_sessions
    from m2agent.settings import load_settings

    workspace = Path.cwd()
    project = load_settings(workspace, {}).project_dir(workspace)
    found = list_sessions(project / "sessions")
    if not found:
        typer.echo("no sessions in this workspace yet")
    for s in found:
        points = f"{s.undo_points} undo point{'s' if s.undo_points != 1 else ''}"
        title = s.title.splitlines()[0][:70] if s.title else ""
        typer.echo(f"{s.id}  {points:14}  {title}")


ENGINE_MISSING = (
    "the embedded engine needs the [engine] extra, which is not installed here ({error}). "
    "Install torch for this machine first (CPU: pip install torch --index-url "
    "https://download.pytorch.org/whl/cpu; CUDA: pip install torch), then: "
    "pip install 'm2agent[engine]'"
)


def _require_engine() -> None:
    """Exit 1 with how to install the engine when its packages are missing."""
    try:
        import fastapi  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        typer.echo(f"error: {ENGINE_MISSING.format(error=e)}", err=True)
        raise typer.Exit(1) from None


class ReasoningChoice(StrEnum):
    append_think = "append_think"
    split_field = "split"


class LogLevelChoice(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command("serve")
def serve(
    model: Annotated[
        Path,
        typer.Option(help="Checkpoint folder (or a config.json with --load-format dummy)."),
    ],
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default 127.0.0.1: this machine only).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, help="Port (0 picks a free one; default 8000).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cuda or cpu (default: cuda when available).")
    ] = None,
    tp: Annotated[
        int | None,
        typer.Option(
            "--tp", "--tensor-parallel-size",
            help="Split the model over N GPUs (GPUs 0..N-1, one process each; default 1).",
        ),
    ] = None,
    ep: Annotated[
        int | None,
        typer.Option(
            "--ep", "--expert-parallel-size",
            help="Spread whole experts over N groups of GPUs (attention stays split over --tp; "
            "default: the layout for the model and GPU count).",
        ),
    ] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16 or float32.")] = None,
    load_format: Annotated[
        str | None, typer.Option(help="auto, or dummy (random weights of the config's shapes).")
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="Model id clients use (default: the folder name).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            help="Require 'Authorization: Bearer KEY' (visible in ps: prefer --api-key-file or "
            "M2AGENT_SERVE_API_KEY)."
        ),
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option(help="Read the required API key from this file.")
    ] = None,
    max_request_bytes: Annotated[
        int | None,
        typer.Option(min=1, help="Refuse request bodies larger than this (413; default 32 MiB)."),
    ] = None,
    max_model_len: Annotated[
        int | None, typer.Option(min=1, help="Context length (default: the model's).")
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(min=1, help="Requests batched together at most (default 32).")
    ] = None,
    max_num_batched_tokens: Annotated[
        int | None, typer.Option(min=1, help="Tokens per step, chunked prefill (default 2048).")
    ] = None,
    block_size: Annotated[
        int | None, typer.Option(min=1, help="Tokens per KV block (default 16).")
    ] = None,
    gpu_memory_utilization: Annotated[
        float | None, typer.Option(help="Share of GPU memory to use (default 0.90).")
    ] = None,
    no_prefix_caching: Annotated[
        bool, typer.Option("--no-prefix-caching", help="Disable KV reuse across requests.")
    ] = False,
    reasoning_mode: Annotated[
        ReasoningChoice | None,
        typer.Option(
            help="append_think: reasoning inside content after `<think>` (default); split: in "
            "the reasoning_content field."
        ),
    ] = None,
    log_file: Annotated[
        Path | None, typer.Option(help="Write logs here instead of stderr.")
    ] = None,
    idle_exit_s: Annotated[
        float | None, typer.Option(help="Exit after this many seconds without requests.")
    ] = None,
    log_level: Annotated[LogLevelChoice | None, typer.Option(help="Log level.")] = None,
) -> None:  # fmt: skip
    """Serve MiniMax-M2 over the OpenAI APIs (chat, completions, responses) and Anthropic's
    Messages API, with tools and reasoning."""
    _require_engine()
    from m2agent.engine.server.__main__ import main as serve_main

    given: dict[str, Any] = {
        "--model": model, "--host": host, "--port": port, "--device": device, "--tp": tp,
        "--dtype": dtype, "--load-format": load_format, "--served-model-name": served_model_name,
        "--ep": ep, "--api-key": api_key, "--api-key-file": api_key_file,
        "--max-request-bytes": max_request_bytes, "--max-model-len": max_model_len,
        "--max-num-seqs": max_num_seqs,
        "--max-num-batched-tokens": max_num_batched_tokens, "--block-size": block_size,
        "--gpu-memory-utilization": gpu_memory_utilization,
        "--reasoning-mode": _value(reasoning_mode), "--log-file": log_file,
        "--idle-exit-s": idle_exit_s, "--log-level": _value(log_level),
    }  # fmt: skip
    argv = [part for flag, value in given.items() if value is not None
            for part in (flag, str(value))]  # fmt: skip
    if no_prefix_caching:
        argv.append("--no-prefix-caching")
    raise typer.Exit(serve_main(argv))


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


QuantOption = Annotated[
    str,
    typer.Option(
        "--quant",
        help=(
            "Weights of the dummy model: fp8 (the published block-scaled FP8), bf16, or auto "
            "(what the config says: minimax-m2 is FP8)."
        ),
    ),
]


def _check_quant(quant: str) -> str:
    if quant not in ("auto", "fp8", "bf16"):
        raise typer.BadParameter(f"--quant must be auto, fp8 or bf16, got {quant!r}")
    return quant


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


@bench_app.callback()
def bench_needs_the_engine() -> None:
    """Benchmarks of the embedded engine against a named baseline, on this machine."""
    _require_engine()


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
    quant: QuantOption = "auto",
    kv_tokens: Annotated[
        int, typer.Option(min=0, help="Size the KV pool for this many tokens (0: just enough).")
    ] = 0,
    ep: EpOption = None,
    json_out: JsonOption = None,
) -> None:
    """Batch-1 decode tok/s and cold time to first token (a prompt never seen before),
    against transformers and the bandwidth bound of the same config. With --tp N the baseline
    is our engine on one GPU."""
    from m2agent.engine.bench.latency import run_latency_bench

    _check_quant(quant)

    def run(config: Path | None, report: Any) -> Any:
        return run_latency_bench(
            model_path=model, dummy_config=config, layers=layers, prompt_tokens=prompt_tokens,
            new_tokens=new_tokens, device=device, repeats=repeats, baseline=baseline,
            experts_impl=experts_impl, profile=profile, tp=_ranks(tp, ep), ep=ep,
            quant=quant, kv_tokens=kv_tokens, report=report,
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
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed rounds per stream count, after a warm-up (median).")
    ] = 3,
    temperature: Annotated[
        float,
        typer.Option(
            min=0.0, help="0: greedy; else sampled with M2's top-p 0.95 and top-k 40 (try 1.0)."
        ),
    ] = 0.0,
    baseline: BaselineOption = True,
    experts_impl: ExpertsOption = "grouped_mm",
    tp: TpOption = 1,
    quant: QuantOption = "auto",
    ep: EpOption = None,
    json_out: JsonOption = None,
) -> None:
    """Output tok/s with N concurrent streams, against transformers batching the same prompts
    (no baseline with --tp N > 1: compare with a --tp 1 run)."""
    _check_quant(quant)
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
            experts_impl=experts_impl, tp=_ranks(tp, ep), ep=ep, quant=quant, repeats=repeats,
            temperature=temperature, report=report,
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
    quant: QuantOption = "auto",
    ep: EpOption = None,
    json_out: JsonOption = None,
) -> None:
    """Time to first token of an agent turn with its prefix cached, against a cold cache."""
    from m2agent.engine.bench.agent import run_agent_bench

    _check_quant(quant)

    def run(config: Path | None, report: Any) -> Any:
        return run_agent_bench(
            model_path=model, dummy_config=config, layers=layers, prefix_tokens=prefix_tokens,
            new_tokens=new_tokens, device=device, repeats=repeats, tp=_ranks(tp, ep), ep=ep,
            quant=quant,
            report=report,
        )  # fmt: skip

    _run_bench(model, dummy_config, run, json_out)


@bench_app.command("kernels")
def bench_kernels(
    tokens: Annotated[str, typer.Option(help="Comma-separated token counts for the MoE layer.")] = (
        "1,4,16,64,256,1024"
    ),
    contexts: Annotated[
        str, typer.Option(help="Comma-separated context lengths for decode attention.")
    ] = "4096,16384,65536",
    bf16: Annotated[bool, typer.Option(help="Also time the bf16 MoE path.")] = True,
    json_out: JsonOption = None,
) -> None:
    """The MoE layer (M2 shapes, FP8), FP8 linears and split-KV decode attention alone, against
    the bytes they must read and the measured matmul rate (CUDA only)."""
    from m2agent.engine.bench.kernels import run_kernels_bench
    from m2agent.engine.errors import EngineError

    try:
        counts = [int(n) for n in tokens.split(",")]
        lengths = [int(n) for n in contexts.split(",")]
    except ValueError:
        raise typer.BadParameter("--tokens and --contexts take integers like 1,4,16") from None
    if min(counts + lengths, default=0) < 1:
        raise typer.BadParameter("--tokens and --contexts need positive integers")
    try:
        report = run_kernels_bench(
            token_counts=counts,
            contexts=lengths,
            bf16=bf16,
            report=lambda line: typer.echo(line, err=True),
        )
    except EngineError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(report.table())
    if json_out is not None:
        json_out.write_text(report.to_json() + "\n", encoding="utf-8")


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


def _mcp_run(action: Any) -> None:
    from m2agent.errors import M2AgentError
    from m2agent.settings import load_settings

    workspace = Path.cwd()
    try:
        typer.echo(action(load_settings(workspace, {}), workspace))
    except M2AgentError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None


@mcp_app.command("list")
def mcp_list(
    check: Annotated[
        bool, typer.Option("--check", help="Start the servers that would start; show tools.")
    ] = False,
) -> None:
    """The MCP servers configured here (user config, trusted project config, .mcp.json), and
    whether each starts."""
    from m2agent.mcp.commands import list_servers

    _mcp_run(lambda settings, workspace: list_servers(settings, workspace, check=check))


@mcp_app.command("approve")
def mcp_approve(
    names: Annotated[list[str] | None, typer.Argument(help="Project servers to approve.")] = None,
    every: Annotated[bool, typer.Option("--all", help="Approve every pending one.")] = False,
) -> None:
    """Approve this project's .mcp.json servers (kept in your state folder, bound to each
    server's command, arguments, environment and URL: a change asks again)."""
    from m2agent.mcp.commands import approve

    _mcp_run(lambda settings, workspace: approve(settings, workspace, names or [], every=every))


@mcp_app.command("revoke")
def mcp_revoke(
    names: Annotated[list[str], typer.Argument(help="Project servers to stop trusting.")],
) -> None:
    """Withdraw the approval of this project's .mcp.json servers."""
    from m2agent.mcp.commands import revoke

    _mcp_run(lambda settings, workspace: revoke(settings, workspace, names))


def main() -> None:
    app(prog_name="m2agent")
