"""Where stdout stands: an error message must not land on the same line as text the command printed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class LineTracker:
    """Wraps a text stream and remembers whether what was written so far ends a line."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.at_line_start = True

    def write(self, text: str) -> int:
        if text:
            self.at_line_start = text.endswith("\n")
        return self.stream.write(text)

    def end_line(self) -> None:
        """End the current line if something was written on it."""
        if not self.at_line_start:
            self.write("\n")
            self.stream.flush()

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


@contextmanager
def tracked_stdout() -> Iterator[LineTracker]:
    """`sys.stdout` wrapped in a `LineTracker` for the duration of the block."""
    stream = sys.stdout
    sys.stdout = LineTracker(stream)
    try:
        yield sys.stdout
    finally:
        sys.stdout = stream
