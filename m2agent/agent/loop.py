"""The plan-act loop: ask the model, run its tool calls, append everything to the `Session` as it
arrives, repeat until the model answers. Yields events, and an `ApprovalRequest` (with the
tool's preview) when a call needs a yes: the front end answers it, and the loop decides once.
Before the first change of each step the workspace is snapshotted; a step that changed nothing
leaves no undo point. Never prints; model failures propagate as BackendError, with every
message so far already in the session."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from m2agent.agent.approvals import ApprovalPolicy, ApprovalRequest
from m2agent.agent.context import compact, context_note, needs_compaction
from m2agent.agent.events import (
    AnswerText,
    Event,
    Notice,
    ReasoningText,
    Retry,
    SnapshotTaken,
    StepUsage,
    TaskDone,
    ToolFinished,
    ToolStarted,
)
from m2agent.agent.messages import AssistantMessage, CallRecord, ToolMessage, UserMessage
from m2agent.agent.session import Session
from m2agent.backends.base import ModelBackend, Retrying, TurnDone
from m2agent.engine.protocol import ContentDelta, ReasoningDelta
from m2agent.hooks import HookEvent, HookOutcome, HookRunner, Permission
from m2agent.tools.base import Description, ToolError
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.registry import ToolRegistry

REPEAT_NUDGE_AFTER = 3

Item = Event | ApprovalRequest


@dataclass(frozen=True, slots=True)
class Budget:
    max_steps: int = 50
    max_seconds: float = 1800.0
    context_tokens: int = 196_608  # the model's window (M2: 196,608)
    max_output_tokens: int | None = None  # tokens the model may generate over the whole task


@dataclass(frozen=True, slots=True)
class _Outcome:
    content: str
    is_error: bool
    metadata: dict[str, object]
    notes: tuple[str, ...] = ()  # for the user (hook warnings)


@dataclass(frozen=True, slots=True)
class _Pre:
    """A call after its PreToolUse hooks: possibly new arguments, or already answered."""

    record: CallRecord
    description: Description | _Outcome
    permission: Permission | None = None
    context: tuple[str, ...] = ()


@dataclass
class Agent:
    backend: ModelBackend
    tools: ToolRegistry
    approvals: ApprovalPolicy
    checkpoints: Checkpoints | None = None
    hooks: HookRunner | None = None  # PreToolUse, PostToolUse and Stop run here

    def run(self, session: Session, budget: Budget) -> Iterator[Item]:
        """Continue `session` (its last message is the user's) until the model answers without
        tool calls or a budget runs out; the last event is `TaskDone`."""
        started = time.monotonic()
        schemas = self.tools.schemas()
        failures: Counter[str] = Counter()
        generated = 0
        stop_hook_active = False
        for step in range(1, budget.max_steps + 1):
            if time.monotonic() - started > budget.max_seconds:
                yield TaskDone("max_time", step - 1, "")
                return
            if budget.max_output_tokens is not None and generated >= budget.max_output_tokens:
                yield TaskDone("max_tokens", step - 1, "")
                return
            done: TurnDone | None = None
            for event in self.backend.stream(session.messages, schemas):
                if isinstance(event, ReasoningDelta):
                    yield ReasoningText(event.text)
                elif isinstance(event, ContentDelta):
                    yield AnswerText(event.text)
                elif isinstance(event, Retrying):
                    yield Retry(event.attempt, event.reason, event.delay_s)
                else:
                    done = event
            if done is None:
                raise RuntimeError("the backend's stream ended without TurnDone")
            session.append(done.message)
            session.add_usage(done.usage)
            yield StepUsage(
                done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.cached_tokens
            )
            used = done.usage.prompt_tokens + done.usage.completion_tokens
            generated += done.usage.completion_tokens
            if not done.message.calls:
                stop = self._hook("Stop", None, {"stop_hook_active": stop_hook_active})
                yield from (Notice(text) for text in stop.messages)
                if stop.blocked and not stop.stop:  # a Stop hook wants the model to go on
                    stop_hook_active = True
                    session.append(UserMessage(f"Stop hook: {stop.reason}"))
                    yield Notice(f"a Stop hook asks the model to go on: {stop.reason}")
                    continue
                yield TaskDone("answered", step, done.message.content)
                return
            yield from self._run_calls(session, done.message, step, used, budget, failures)
            if used and needs_compaction(used, budget.context_tokens):
                session.replace_history(compact(session.messages))
                yield Notice(
                    f"context {used}/{budget.context_tokens} tokens: older steps compacted"
                )
        yield TaskDone("max_steps", budget.max_steps, "")

    def _run_calls(
        self,
        session: Session,
        message: AssistantMessage,
        step: int,
        used: int,
        budget: Budget,
        failures: Counter[str],
    ) -> Iterator[Item]:
        """Run one response's calls (consecutive read-only ones side by side), answering each
        in order as soon as it is done; one snapshot before the step's first change."""
        snapshot: int | None = None
        last = message.calls[-1].id
        for batch in self._batches(message.calls):
            described = [self._describe(record) for record in batch]
            for record, description in zip(batch, described, strict=True):
                summary = description.summary if isinstance(description, Description) else ""
                yield ToolStarted(record.id, record.call.name, dict(record.call.arguments), summary)
            permissions: list[Permission | None] = []
            contexts: list[tuple[str, ...]] = []  # PreToolUse hooks' additionalContext
            for index, record in enumerate(batch):
                pre = yield from self._pre_tool_use(record, described[index], len(batch) > 1)
                batch[index], described[index] = pre.record, pre.description
                permissions.append(pre.permission)
                contexts.append(pre.context)
            if len(batch) > 1:
                with ThreadPoolExecutor(max_workers=min(8, len(batch))) as pool:
                    outcomes = list(pool.map(self._execute, batch, described))
            else:
                record, description = batch[0], described[0]
                outcome = None
                if isinstance(description, Description):
                    outcome = yield from self._approve(record, description, permissions[0])
                if outcome is None and snapshot is None and self._mutates(record.call.name):
                    snapshot = self._snapshot(f"before step {step}: {record.call.name}")
                outcomes = [outcome or self._execute(record, description)]
            for record, outcome, context in zip(batch, outcomes, contexts, strict=True):
                content = outcome.content + "".join(f"\n[hook context: {c}]" for c in context)
                if outcome.is_error:
                    key = json.dumps([record.call.name, record.call.arguments], sort_keys=True,
                                     default=str)  # fmt: skip
                    failures[key] += 1
                    if failures[key] >= REPEAT_NUDGE_AFTER:
                        content += (
                            f"\n[This exact call has now failed {failures[key]} times. Stop "
                            "repeating it: read the error, look at the code again, and change "
                            "approach.]"
                        )
                if record.id == last and used:
                    content += "\n" + context_note(used, budget.context_tokens)
                session.append(ToolMessage(record.id, content, outcome.is_error))
                yield from (Notice(text) for text in outcome.notes)
                yield ToolFinished(record.id, record.call.name, content, outcome.is_error,
                                   dict(outcome.metadata))  # fmt: skip
        if snapshot is not None and self.checkpoints is not None:
            if self.checkpoints.changed_since(snapshot):
                label = f"before step {step}"
                session.record_snapshot(snapshot, label)
                yield SnapshotTaken(snapshot, label)
            else:
                self.checkpoints.drop(snapshot)

    def _pre_tool_use(
        self, record: CallRecord, description: Description | _Outcome, is_batched: bool
    ) -> Generator[Item, None, _Pre]:
        """The PreToolUse hooks' say on a call: a block becomes the call's answer (the model
        reads the reason); `updatedInput` replaces the arguments (described again, so the
        approval shows what will run); a decision (allow / ask / deny) goes to the approval
        step. In a batch of read-only calls, an `ask` is asked here, before they run."""
        if not isinstance(description, Description):
            return _Pre(record, description)
        name, arguments = record.call.name, dict(record.call.arguments)
        pre = self._hook("PreToolUse", name, {"tool_name": name, "tool_input": arguments})
        yield from (Notice(text) for text in pre.messages)
        if pre.blocked:
            refusal = _Outcome(f"not run: blocked by a PreToolUse hook: {pre.reason}", True, {})
            return _Pre(record, refusal)
        if pre.updated_input is not None:
            call = dataclasses.replace(record.call, arguments=dict(pre.updated_input))
            record = CallRecord(record.id, call)
            description = self._describe(record)
            yield Notice(f"a PreToolUse hook changed the input of {name}: {pre.updated_input}")
            if not isinstance(description, Description):
                return _Pre(record, description)
        if is_batched and pre.permission == "ask":
            refused = yield from self._approve(record, description, "ask")
            return _Pre(record, refused or description, "allow", pre.context)
        return _Pre(record, description, pre.permission, pre.context)

    def _approve(
        self, record: CallRecord, description: Description, hook: Permission | None = None
    ) -> Generator[ApprovalRequest, None, _Outcome | None]:
        """None when the call may run; otherwise the refusal to answer it with. `hook`: a
        PreToolUse hook's decision (allow answers the question, ask forces it)."""
        annotations = self.tools.get(record.call.name).annotations
        decision = self.approvals.decide(annotations, description)
        if decision == "allow" and hook == "ask":
            decision = "ask"
        elif decision == "ask" and hook == "allow":  # a hook may answer the question, not
            decision = "allow"  # lift the mode's deny
        if decision == "allow":
            return None
        if decision == "deny":
            why = self.approvals.why_denied(record.call.name)
            return _Outcome(f"not run: {why}", True, {})
        reason = self.approvals.reason(record.call.name, description)
        request = ApprovalRequest(record.id, record.call.name, description, reason)
        yield request
        allowed, why = self.approvals.apply(request)
        return None if allowed else _Outcome(f"not run: {why}", True, {})

    def _describe(self, record: CallRecord) -> Description | _Outcome:
        """The tool's description of the call, or the error that answers it instead."""
        if record.call.error is not None:
            return _Outcome(f"invalid tool call: {record.call.error}", True, {})
        try:
            return self.tools.describe(record.call.name, record.call.arguments)
        except ToolError as e:
            return _Outcome(str(e), True, {})

    def _execute(self, record: CallRecord, description: Description | _Outcome) -> _Outcome:
        if isinstance(description, _Outcome):
            return description
        name, arguments = record.call.name, dict(record.call.arguments)
        result = self.tools.call(name, arguments)
        response = {"content": result.content, "is_error": result.is_error, **result.metadata}
        payload = {"tool_name": name, "tool_input": arguments, "tool_response": response}
        post = self._hook("PostToolUse", name, payload)
        content = result.content
        if post.blocked:
            content += f"\n[PostToolUse hook: {post.reason}]"
        for context in post.context:
            content += f"\n[hook context: {context}]"
        return _Outcome(content, result.is_error, dict(result.metadata), post.messages)

    def _hook(self, event: HookEvent, tool: str | None, payload: dict[str, object]) -> HookOutcome:
        if self.hooks is None:
            return HookOutcome()
        return self.hooks.run(event, payload, tool)

    def _batches(self, calls: tuple[CallRecord, ...]) -> Iterator[list[CallRecord]]:
        """Consecutive read-only calls together; every other call on its own, in order."""
        batch: list[CallRecord] = []
        for record in calls:
            if (
                record.call.error is None
                and self._known(record.call.name)
                and not self._mutates(record.call.name)
            ):
                batch.append(record)
                continue
            if batch:
                yield batch
                batch = []
            yield [record]
        if batch:
            yield batch

    def _known(self, name: str) -> bool:
        return name in self.tools.names

    def _mutates(self, name: str) -> bool:
        return self._known(name) and not self.tools.get(name).annotations.read_only

    def _snapshot(self, label: str) -> int | None:
        if self.checkpoints is None:
            return None
        return self.checkpoints.snapshot(label).number
