"""JSON mode (`response_format: {"type": "json_object"}`): which tokens one request may write next.

M2 reasons first (`<think>` ... `</think>`, the prompt opens the reasoning); the reasoning is
free. What follows `</think>` must be exactly one JSON object (leading whitespace allowed),
and the request ends where the object closes. The budget is kept throughout: a token is
allowed only if the object can still be closed within the tokens left (one token per byte of
`JsonPrefix.completion_length`, which single-byte tokens always give), so output that runs out
of `max_tokens` still ends in a complete object. The reasoning is closed early for the same
reason. End-of-turn and stop tokens are never allowed: the object's end ends the request.
Pure Python: the sampler (`layers/sampler.py`) asks `allows` of the tokens it draws.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from m2agent.engine.json_prefix import JsonPrefix

REASONING_CLOSE_TOKENS = 1  # `</think>`
EMPTY_OBJECT_BYTES = 2  # `{}`: the shortest object


@dataclass(frozen=True, slots=True)
class TokenTexts:
    """The bytes of every token id (None where a token has no text of its own: markers,
    padding ids past the tokenizer), and the ids grouped by first byte for full scans."""

    texts: Sequence[bytes | None]
    by_first_byte: dict[int, tuple[int, ...]]

    @classmethod
    def of(cls, texts: Sequence[bytes | None]) -> TokenTexts:
        groups: dict[int, list[int]] = {}
        for token_id, text in enumerate(texts):
            if text:
                groups.setdefault(text[0], []).append(token_id)
        return cls(tuple(texts), {byte: tuple(ids) for byte, ids in groups.items()})

    def text(self, token_id: int) -> bytes | None:
        return self.texts[token_id] if 0 <= token_id < len(self.texts) else None


def minimum_budget(in_reasoning: bool) -> int:
    """The fewest output tokens a JSON-mode request needs: `</think>` if reasoning, then `{}`."""
    return (REASONING_CLOSE_TOKENS if in_reasoning else 0) + EMPTY_OBJECT_BYTES


def starts_in_reasoning(
    prompt_ids: Sequence[int], think_open: int | None, think_close: int | None
) -> bool:
    """Whether the prompt leaves a reasoning block open (as M2's generation prompt does)."""
    if think_open is None or think_close is None:
        return False
    last_open = max((i for i, t in enumerate(prompt_ids) if t == think_open), default=-1)
    last_close = max((i for i, t in enumerate(prompt_ids) if t == think_close), default=-1)
    return last_open > last_close


class JsonObjectConstraint:
    """One request's JSON-mode state, advanced by each token it writes."""

    def __init__(
        self,
        texts: TokenTexts,
        *,
        budget: int,
        in_reasoning: bool,
        think_close: int | None,
        banned: Iterable[int] = (),
    ) -> None:
        if budget < minimum_budget(in_reasoning):
            raise ValueError(
                f"JSON mode needs at least {minimum_budget(in_reasoning)} output tokens, "
                f"got {budget}"
            )
        self.texts, self.think_close = texts, think_close
        self.banned = frozenset(banned)
        self.remaining = budget  # tokens still to be written
        self.in_reasoning = in_reasoning
        self.state = JsonPrefix()
        self.given_up = False  # see `give_up`

    @property
    def complete(self) -> bool:
        return self.state.complete

    def allows(self, token_id: int) -> bool:
        """Whether `token_id` may be written next."""
        if self.given_up:
            return True
        if token_id in self.banned or self.complete:
            return False
        left_after = self.remaining - 1
        if self.in_reasoning:
            if token_id == self.think_close:
                return left_after >= EMPTY_OBJECT_BYTES
            return self._reasoning_may_go_on()
        return self._next_state(token_id, left_after) is not None

    def advance(self, token_id: int) -> None:
        """Record that `token_id` was written (it must be allowed)."""
        if not self.allows(token_id):
            raise ValueError(f"token {token_id} breaks the JSON-mode constraint")
        self.remaining -= 1
        if self.given_up:
            return
        if self.in_reasoning:
            self.in_reasoning = token_id != self.think_close
            return
        state = self._next_state(token_id, self.remaining)
        assert state is not None
        self.state = state

    def give_up(self) -> None:
        """Stop constraining: no token continues the output within the budget. Only a
        vocabulary without single-byte tokens (or with them made stop tokens) gets here;
        the request then runs unconstrained rather than failing the batch."""
        self.given_up = True

    def allowed_ids(self) -> list[int]:
        """Every token that `allows` accepts (the sampler's fallback: a full-vocabulary scan,
        narrowed by first byte)."""
        if self.in_reasoning and not self.given_up and not self._reasoning_may_go_on():
            close = self.think_close
            return [close] if close is not None and self.allows(close) else []
        if self.in_reasoning or self.given_up:
            return [t for t in range(len(self.texts.texts)) if self.allows(t)]
        left_after = self.remaining - 1
        allowed = []
        for byte, ids in self.texts.by_first_byte.items():
            if self.state.feed(bytes([byte])) is None:
                continue
            allowed += [t for t in ids if self._next_state(t, left_after) is not None]
        return [t for t in allowed if t not in self.banned]

    def _reasoning_may_go_on(self) -> bool:
        """Whether a token other than `</think>` leaves room to end the reasoning and the object."""
        return self.remaining - 1 >= REASONING_CLOSE_TOKENS + EMPTY_OBJECT_BYTES

    def _next_state(self, token_id: int, left_after: int) -> JsonPrefix | None:
        text = self.texts.text(token_id)
        if not text:
            return None
        state = self.state.feed(text)
        if state is None or state.completion_length > left_after:
            return None
        return state
