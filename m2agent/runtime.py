"""Wiring, in one place: settings -> model backend, sandbox runner, tools, approval policy,
snapshot store and sessions of one workspace. `fix`, `ci` and the REPL all build through here;
nothing else constructs these parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2agent.agent.approvals import ApprovalPolicy, Mode, RuleStore
from m2agent.agent.loop import Agent
from m2agent.agent.prompts import system_prompt
from m2agent.agent.session import Session, find_session
from m2agent.backends.base import ModelBackend
from m2agent.errors import SandboxError, UsageError
from m2agent.extensions import Extensions
from m2agent.hooks import HookRunner
from m2agent.settings import Settings
from m2agent.stream_json import PERMISSION_MODES
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.defaults import default_tools
from m2agent.tools.registry import ToolRegistry
from m2agent.tools.shell import CommandRunner, SandboxUnavailable
from m2agent.tools.todo import TodoList
from m2agent.tools.workspace import Workspace

NO_MODEL = (
    "no model: pass --endpoint URL --model NAME for a server (or set M2AGENT_ENDPOINT and "
    "M2AGENT_MODEL), or --model PATH to a local MiniMax-M2 checkpoint folder to run it with "
    "the embedded engine"
)


def embedded_plan(settings: Settings) -> tuple[Path, int, str | None] | None:
    """(weights, tp, device) for the embedded engine, from `--model PATH` or the weights found
    in the Hugging Face cache; None when there are none. UsageError when weights were found
    but cannot be served here (saying why, and how to use an endpoint instead)."""
    from m2agent.backends import discovery
    from m2agent.backends.embedded import is_local_model

    if settings.model and is_local_model(settings.model):
        return Path(settings.model), settings.tp, None
    if settings.model:
        return None  # a model name: it needs an endpoint
    found = discovery.hub_snapshot(settings.hf_hub_cache)
    if found is None:
        return None
    chosen = settings.tp if settings.tp > 1 else None
    plan = discovery.plan(found, discovery.weight_bytes(found), discovery.visible_gpus(), chosen)
    if plan.tp is None:
        raise UsageError(
            f"found MiniMax-M2 weights at {found}, but cannot serve them here: {plan.why}. "
            + NO_MODEL.replace("no model: pass", "Pass", 1)
        )
    return found, plan.tp, plan.device


def build_backend(
    settings: Settings,
    progress: Callable[[str], None] = lambda _: None,
    *,
    background: bool = False,
) -> ModelBackend:
    """The backend the settings ask for; UsageError (saying how to set one) when there is
    none. `background`: an embedded engine starts on a thread (the REPL prompts meanwhile)."""
    from m2agent.backends.embedded import BackgroundEngine, ensure_engine

    limits: dict[str, Any] = {"max_tokens": settings.max_tokens,
                              "temperature": settings.temperature}  # fmt: skip
    local = None if settings.endpoint else embedded_plan(settings)
    if local is not None:
        weights, tp, device = local
        if not settings.model:
            on = f"{tp} GPU{'s' if tp > 1 else ''}" if device is None else device
            progress(f"found MiniMax-M2 weights at {weights}; serving them on {on}")
        if background:
            progress("starting the embedded engine in the background")
            return BackgroundEngine(weights, settings.state_dir, tp=tp, device=device, **limits)
        from m2agent.backends.completions import CompletionsBackend

        url, name = ensure_engine(
            weights, settings.state_dir, tp=tp, device=device, progress=progress
        )
        return CompletionsBackend(url, name, **limits)
    if not settings.endpoint or not settings.model:
        raise UsageError(NO_MODEL)
    target = (settings.endpoint, settings.model, settings.api_key)
    if settings.api == "anthropic":
        from m2agent.backends.anthropic import AnthropicBackend

        return AnthropicBackend(*target, auth_token=settings.auth_token, **limits)
    if settings.api == "completions":
        from m2agent.backends.completions import CompletionsBackend

        return CompletionsBackend(*target, **limits)
    from m2agent.backends.openai_chat import OpenAIChatBackend

    style_cache = settings.state_dir / "server-styles.json"
    return OpenAIChatBackend(*target, **limits, style_cache=style_cache)


@dataclass
class Runtime:
    """The parts of one workspace's agent. `backend` may be None (the REPL starts without a
    model and is told one later, through `/model`)."""

    settings: Settings
    workspace: Path
    runner: CommandRunner
    checkpoints: Checkpoints
    todos: TodoList
    tools: ToolRegistry
    approvals: ApprovalPolicy
    agent: Agent | None
    project: Path  # this workspace's state folder (sessions, snapshots, approvals)
    extensions: Extensions | None = None  # MCP servers and hooks from the configuration
    builtin: ToolRegistry | None = None  # the tools before MCP servers' were added

    @property
    def sessions(self) -> Path:
        return self.project / "sessions"

    def with_backend(self, backend: ModelBackend) -> Agent:
        """The agent, now talking to `backend` (tools, approvals, snapshots unchanged)."""
        hooks = self.agent.hooks if self.agent is not None else None
        self.agent = Agent(backend, self.tools, self.approvals, self.checkpoints, hooks)
        return self.agent

    def refresh_tools(self) -> ToolRegistry:
        """The built-in tools plus the MCP tools of the servers ready now (servers start in the
        background: the REPL calls this before each turn)."""
        builtin = self.builtin or self.tools
        extra = self.extensions.tools() if self.extensions is not None else []
        self.builtin, self.tools = builtin, builtin.with_tools(extra)
        if self.agent is not None:
            self.agent.tools = self.tools
        return self.tools

    def attach_hooks(self, session: Session) -> HookRunner | None:
        """The configured hooks, bound to `session` (its id and transcript), on the agent."""
        if self.extensions is None:
            return None
        mode = PERMISSION_MODES.get(self.approvals.mode, self.approvals.mode)
        hooks = self.extensions.hooks(session.id, session.path, mode)
        if self.agent is not None:
            self.agent.hooks = hooks
        return hooks

    def close(self) -> None:
        """Stop what runs beside the agent (MCP servers)."""
        if self.extensions is not None:
            self.extensions.close()

    def new_session(self, title: str) -> Session:
        """A fresh session, its first message the system prompt."""
        from m2agent.agent.messages import SystemMessage

        session = Session.create(self.sessions, self.workspace, title)
        prompt = system_prompt(self.workspace, user_dir=self.settings.config_dir, home=Path.home())
        session.append(SystemMessage(prompt))
        return session

    def resume_session(self, session_id: str | None) -> Session:
        """An earlier session of this workspace (the latest when None); UsageError if none."""
        try:
            return Session.load(find_session(self.sessions, session_id).path)
        except LookupError as e:
            raise UsageError(str(e)) from None


def checkpoints_of(settings: Settings, workspace: Path) -> Checkpoints:
    """The workspace's snapshot store (in the user's state folder, never in the repository)."""
    return Checkpoints(workspace, settings.project_dir(workspace) / "snapshots.git")


def build_runtime(
    settings: Settings,
    workspace: Path,
    backend: ModelBackend | None,
    *,
    mode: Mode,
    extensions: Extensions | None = None,
) -> Runtime:
    """Raises SandboxError when commands could not run safely here. `extensions`: the
    session's MCP servers and hooks (`open_extensions`); `Runtime.close()` stops them."""
    policy = settings.sandbox_policy(workspace)
    runner = CommandRunner(policy, settings.sandbox)
    try:
        runner.backend()
    except SandboxUnavailable as e:
        raise SandboxError(str(e)) from None
    project = settings.project_dir(workspace)
    todos = TodoList()
    tools = default_tools(Workspace(workspace, hidden=policy.hidden), todos, runner=runner)
    runtime = Runtime(
        settings=settings,
        workspace=workspace,
        runner=runner,
        checkpoints=checkpoints_of(settings, workspace),
        todos=todos,
        tools=tools,
        approvals=ApprovalPolicy(mode, RuleStore(project / "approvals.json")),
        agent=None,
        project=project,
        extensions=extensions,
    )
    runtime.refresh_tools()
    if backend is not None:
        runtime.with_backend(backend)
    return runtime
