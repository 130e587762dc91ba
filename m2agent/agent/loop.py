"""The plan-act loop: ask the model, run its tool calls through approvals (a snapshot before the
first change of each step, for undo), append the results, repeat until it answers. Yields
events; never prints. History is kept exactly as the model produced it (reasoning included)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from m2agent.agent.approvals import ApprovalPolicy
from m2agent.agent.context import compact, context_note, needs_compaction
from m2agent.agent.events import (
    AnswerText,
    ApprovalRequested,
    Event,
    Notice,
    ReasoningText,
    SnapshotTaken,
    StepUsage,
    TaskDone,
    ToolFinished,
    ToolStarted,
)
from m2agent.backends.base import AssistantTurn, CallRecord, ModelBackend, Retrying, TurnDone
from m2agent.engine.protocol import ContentDelta, ReasoningDelta
from m2agent.hooks import HookEvent, HookOutcome, HookRunner
from m2agent.tools.base import ToolError
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.registry import ToolRegistry

REPEAT_NUDGE_AFTER = 3


@dataclass(frozen=True, slots=True)
class Budget:
    max_steps: int = 50
    max_seconds: float = 1800.0
    context_tokens: int = 196_608  # the model's window (M2: 196,608)
    max_output_tokens: int | None = None  # tokens the model may generate over the whole task


@dataclass
class Agent:
    backend: ModelBackend
    tools: ToolRegistry
    approvals: ApprovalPolicy
    checkpoints: Checkpoints | None = None
    hooks: HookRunner | None = None

    def run(self, messages: list[dict[str, Any]], budget: Budget) -> Iterator[Event]:
        """Continue the conversation in `messages` (appended to in place) until the model
        answers without tool calls or a budget runs out."""
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
            turn: AssistantTurn | None = None
            for event in self.backend.stream(messages, schemas):
                if isinstance(event, ReasoningDelta):
                    yield ReasoningText(event.text)
                elif isinstance(event, ContentDelta):
                    yield AnswerText(event.text)
                elif isinstance(event, Retrying):
                    yield Notice(
                        f"model request failed ({event.reason}); retrying in {event.delay_s:.1f}s"
                    )
                elif isinstance(event, TurnDone):
                    turn = event.turn
            assert turn is not None, "a backend stream always ends with TurnDone"
            yield StepUsage(
                turn.usage.prompt_tokens, turn.usage.completion_tokens, turn.usage.cached_tokens
            )
            messages.append(turn.message())
            used = turn.usage.prompt_tokens + turn.usage.completion_tokens
            generated += turn.usage.completion_tokens
            if not turn.calls:
                stop = self._hook("Stop", None, {"stop_hook_active": stop_hook_active})
                for text in stop.messages:
                    yield Notice(text)
                if stop.blocked and not stop.stop:
                    stop_hook_active = True
                    messages.append({"role": "user", "content": f"Stop hook: {stop.reason}"})
                    yield Notice(f"a Stop hook asks the model to go on: {stop.reason}")
                    continue
                yield TaskDone("answered", step, turn.content)
                return
            snapshotted = False
            for batch in self._batches(turn.calls):
                for record in batch:
                    yield ToolStarted(record.id, record.call.name, dict(record.call.arguments))
                if len(batch) > 1:  # read-only calls of one response run side by side
                    with ThreadPoolExecutor(max_workers=min(8, len(batch))) as pool:
                        outcomes = list(pool.map(self._outcome, batch))
                else:
                    call = batch[0].call
                    if call.error is None and self._needs_asking(call.name, call.arguments):
                        yield ApprovalRequested(batch[0].id, call.name, dict(call.arguments))
                    if call.error is None and not snapshotted and self._mutates(call.name):
                        snapshot = self._snapshot(f"before step {step}: {call.name}")
                        if snapshot is not None:
                            yield snapshot
                        snapshotted = True
                    outcomes = [self._outcome(batch[0])]
                for record, (content, is_error, meta) in zip(batch, outcomes, strict=True):
                    call = record.call
                    key = json.dumps([call.name, call.arguments], sort_keys=True, default=str)
                    if is_error:
                        failures[key] += 1
                        if failures[key] >= REPEAT_NUDGE_AFTER:
                            content += (
                                f"\n[This exact call has now failed {failures[key]} times. Stop "
                                "repeating it: read the error, look at the code again, and "
                                "change approach.]"
                            )
                    messages.append({"role": "tool", "tool_call_id": record.id, "content": content})
                    yield ToolFinished(record.id, call.name, content, is_error, meta)
            if used:
                messages[-1]["content"] += "\n" + context_note(used, budget.context_tokens)
            if used and needs_compaction(used, budget.context_tokens):
                messages[:] = compact(messages)
                yield Notice(
                    f"context {used}/{budget.context_tokens} tokens: older steps compacted"
                )
        yield TaskDone("max_steps", budget.max_steps, "")

    def _batches(self, calls: list[CallRecord]) -> Iterator[list[CallRecord]]:
        """Consecutive read-only calls together; every other call on its own, in order."""
        batch: list[CallRecord] = []
        for record in calls:
            if (
                record.call.error is None
                and not self._mutates(record.call.name)
                and self._known(record.call.name)
            ):
                batch.append(record)
                continue
            if batch:
                yield batch
                batch = []
            yield [record]
        if batch:
            yield batch

    def _needs_asking(self, name: str, arguments: dict[str, Any]) -> bool:
        if not self._known(name):
            return False
        annotations = self.tools.get(name).annotations
        return self.approvals.decide(name, annotations, arguments) == "ask"

    def _known(self, name: str) -> bool:
        return name in self.tools.names

    def _outcome(self, record: CallRecord) -> tuple[str, bool, dict[str, Any]]:
        if record.call.error is not None:
            return f"invalid tool call: {record.call.error}", True, {}
        return self._run_call(record.call.name, record.call.arguments)

    def _mutates(self, name: str) -> bool:
        try:
            return not self.tools.get(name).annotations.read_only
        except ToolError:
            return False

    def _snapshot(self, label: str) -> SnapshotTaken | None:
        if self.checkpoints is None:
            return None
        snapshot = self.checkpoints.snapshot(label)
        return SnapshotTaken(snapshot.number, label)

    def _run_call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool, dict[str, Any]]:
        try:
            annotations = self.tools.get(name).annotations
        except ToolError as e:  # unknown tool: the registry explains
            return str(e), True, {}
        pre = self._hook("PreToolUse", name, {"tool_name": name, "tool_input": arguments})
        if pre.blocked:
            return f"not run: blocked by a PreToolUse hook: {pre.reason}", True, {}
        if pre.permission != "allow":
            allowed, why = self.approvals.check(name, annotations, arguments)
            if not allowed:
                return f"not run: {why}", True, {}
        result = self.tools.call(name, arguments)
        response = {"content": result.content, "is_error": result.is_error, **result.metadata}
        post = self._hook(
            "PostToolUse",
            name,
            {"tool_name": name, "tool_input": arguments, "tool_response": response},
        )
        content = result.content
        if post.blocked:
            content += f"\n[PostToolUse hook: {post.reason}]"
        for context in (*pre.context, *post.context):
            content += f"\n[hook context: {context}]"
        return content, result.is_error, dict(result.metadata)

    def _hook(self, event: HookEvent, tool: str | None, payload: dict[str, Any]) -> HookOutcome:
        if self.hooks is None:
            return HookOutcome()
        return self.hooks.run(event, payload, tool)
