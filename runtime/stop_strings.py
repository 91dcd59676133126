"""Stop strings over streamed text: hold back what could begin one, end at the first match.

Text arrives a token at a time; a stop string may span tokens. `StopStrings.feed` returns the text
that is safe to show (none of it can be part of a stop string), keeps back the tail that is the
start of one, and at the first stop string to be completed drops it and everything after it. The
result depends on the text only, not on how it was split into pieces.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import InputError


class StopStrings:
    """Match `stops` in text fed piece by piece. After a match, `matched` is the stop string found."""

    def __init__(self, stops: Sequence[str] = ()):
        if isinstance(stops, str) or not all(isinstance(s, str) and s for s in stops):
            raise InputError("stop strings must be a list of non-empty strings")
        self.stops = tuple(stops)
        self.matched: str | None = None
        self._held = ""

    def feed(self, text: str) -> str:
        """The text that can be shown now, given the next `text`; '' once a stop string has matched."""
        if self.matched is not None:
            return ""
        held = self._held + text
        found = [(i + len(s), i, s) for s in self.stops if (i := held.find(s)) >= 0]
        if found:  # the first to end is the one generation would have stopped at
            _, at, self.matched = min(found)
            self._held = ""
            return held[:at]
        keep = self._longest_start(held)
        self._held = held[len(held) - keep:]
        return held[:len(held) - keep]

    def flush(self) -> str:
        """The text held back when the stream ends without a match."""
        held, self._held = self._held, ""
        return held

    def _longest_start(self, text: str) -> int:
        """Length of the longest end of `text` that begins a stop string (shorter than it)."""
        for n in range(min(len(text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0
