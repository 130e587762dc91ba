"""The plan-act loop: ask the model, run its tool calls, append everything to the `Session` as it
arrives, repeat until the model answers. Yields events, and an `ApprovalRequest` (with the
tool's preview) when a call needs a yes: the front end answers it, and the loop decides once.
Before the first change of each step the workspace is snapshotted; a step that changed nothing
leaves no undo point. Never prints; model failures propagate as BackendError, with every
message so far already in the session."""

from __future__ import annotations

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
from m2agent.agent.messages import AssistantMessage, CallRecord, ToolMessage
from m2agent.agent.session import Session
from m2agent.backends.base import ModelBackend, Retrying, TurnDone
from m2agent.engine.protocol import ContentDelta, ReasoningDelta
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


@dataclass
class Agent:
    backend: ModelBackend
    tools: ToolRegistry
    approvals: ApprovalPolicy
    checkpoints: Checkpoints | None = None

    def run(self, session: Session, budget: Budget) -> Iterator[Item]:
        """Continue `session` (its last message is the user's) until the model answers without
        tool calls or a budget runs out; the last event is `TaskDone`."""
        started = time.monotonic()
        schemas = self.tools.schemas()
        failures: Counter[str] = Counter()
        generated = 0
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
            if len(batch) > 1:
                with ThreadPoolExecutor(max_workers=min(8, len(batch))) as pool:
                    outcomes = list(pool.map(self._execute, batch, described))
            else:
                record, description = batch[0], described[0]
                outcome = None
                if isinstance(description, Description):
                    outcome = yield from self._approve(record, description)
                if outcome is None and snapshot is None and self._mutates(record.call.name):
                    snapshot = self._snapshot(f"before step {step}: {record.call.name}")
                outcomes = [outcome or self._execute(record, description)]
            for record, outcome in zip(batch, outcomes, strict=True):
                content = outcome.content
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
                yield ToolFinished(record.id, record.call.name, content, outcome.is_error,
                                   dict(outcome.metadata))  # fmt: skip
        if snapshot is not None and self.checkpoints is not None:
            if self.checkpoints.changed_since(snapshot):
                label = f"before step {step}"
                session.record_snapshot(snapshot, label)
                yield SnapshotTaken(snapshot, label)
            else:
                self.checkpoints.drop(snapshot)

    def _approve(
        self, record: CallRecord, description: Description
    ) -> Generator[ApprovalRequest, None, _Outcome | None]:
        """None when the call may run; otherwise the refusal to answer it with."""
        annotations = self.tools.get(record.call.name).annotations
        decision = self.approvals.decide(annotations, description)
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
        result = self.tools.call(record.call.name, record.call.arguments)
        return _Outcome(result.content, result.is_error, dict(result.metadata))

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
