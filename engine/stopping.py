"""Stop strings over streamed text: the text is cut before the first stop string, and a tail
that could still become one is held back, so a stop string never leaks into the output."""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(stops)
        self._longest = max((len(s) for s in self._stops), default=0)
        self.text = ""  # everything decoded so far (cut at the stop once one is found)
        self._emitted = 0
        self.is_stopped = False

    def add(self, delta: str) -> str:
        """Append decoded text; return what can be emitted now. Check `is_stopped` after."""
        if self.is_stopped:
            return ""
        self.text += delta
        if not self._stops:
            return self._emit(len(self.text))
        window_start = max(0, self._emitted - self._longest + 1)
        hits = [i for s in self._stops if (i := self.text.find(s, window_start)) >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.is_stopped = True
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._held_back())

    def flush(self) -> str:
        """End of generation for another reason: release the held-back tail."""
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        for k in range(min(self._longest - 1, len(self.text)), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self._stops):
                return k
        return 0

    def _emit(self, end: int) -> str:
        end = max(end, self._emitted)
        out, self._emitted = self.text[self._emitted : end], end
        return out
