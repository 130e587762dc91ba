"""The plan-act loop: ask the model, run its tool calls through approvals (a snapshot before the
first change of each step, for undo), append the results, repeat until it answers. Yields
events; never prints. History is kept exactly as the model produced it (reasoning included)."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from m2agent.agent.approvals import ApprovalPolicy
from m2agent.agent.events import (
    AnswerText,
    Event,
    Notice,
    ReasoningText,
    SnapshotTaken,
    StepUsage,
    TaskDone,
    ToolFinished,
    ToolStarted,
)
from m2agent.backends.base import AssistantTurn, ModelBackend, Retrying, TurnDone
from m2agent.engine.protocol import ContentDelta, ReasoningDelta
from m2agent.tools.base import ToolError
from m2agent.tools.checkpoints import Checkpoints
from m2agent.tools.registry import ToolRegistry

REPEAT_NUDGE_AFTER = 3


@dataclass(frozen=True, slots=True)
class Budget:
    max_steps: int = 50
    max_seconds: float = 1800.0


@dataclass
class Agent:
    backend: ModelBackend
    tools: ToolRegistry
    approvals: ApprovalPolicy
    checkpoints: Checkpoints | None = None

    def run(self, messages: list[dict[str, Any]], budget: Budget) -> Iterator[Event]:
        """Continue the conversation in `messages` (appended to in place) until the model
        answers without tool calls or a budget runs out."""
        started = time.monotonic()
        schemas = self.tools.schemas()
        failures: Counter[str] = Counter()
        for step in range(1, budget.max_steps + 1):
            if time.monotonic() - started > budget.max_seconds:
                yield TaskDone("max_time", step - 1, "")
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
            if not turn.calls:
                yield TaskDone("answered", step, turn.content)
                return
            snapshotted = False
            for record in turn.calls:
                call = record.call
                yield ToolStarted(record.id, call.name, dict(call.arguments))
                meta: dict[str, Any] = {}
                if call.error is not None:
                    content, is_error = f"invalid tool call: {call.error}", True
                else:
                    if not snapshotted and self._mutates(call.name):
                        snapshot = self._snapshot(f"before step {step}: {call.name}")
                        if snapshot is not None:
                            yield snapshot
                        snapshotted = True
                    content, is_error, meta = self._run_call(call.name, call.arguments)
                key = json.dumps([call.name, call.arguments], sort_keys=True, default=str)
                if is_error:
                    failures[key] += 1
                    if failures[key] >= REPEAT_NUDGE_AFTER:
                        content += (
                            f"\n[This exact call has now failed {failures[key]} times. Stop "
                            "repeating it: read the error, look at the code again, and change "
                            "approach.]"
                        )
                messages.append({"role": "tool", "tool_call_id": record.id, "content": content})
                yield ToolFinished(record.id, call.name, content, is_error, meta)
        yield TaskDone("max_steps", budget.max_steps, "")

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
        allowed, why = self.approvals.check(name, annotations, arguments)
        if not allowed:
            return f"not run: {why}", True, {}
        result = self.tools.call(name, arguments)
        return result.content, result.is_error, dict(result.metadata)
