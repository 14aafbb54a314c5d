"""Bounded log streams: at most one line per key per interval, the next one saying how many were folded in.

Anything a client can trigger over and over (rejected connections, handler tracebacks, accept errors, malformed
metrics requests) logs through a :class:`Throttle`; the exact counts live in the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

INTERVAL = 10.0  # seconds between two lines for the same key


class Throttle:
    def __init__(self, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[Hashable, float] = {}  # key -> when its next line may be written
        self._folded: dict[Hashable, int] = {}  # key -> events not logged since its last line

    def __call__(self, key: Hashable) -> int | None:
        """None: stay quiet. Else log now; the value is how many events were folded since the last line."""
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._folded[key] = self._folded.get(key, 0) + 1
            return None
        self._next[key] = now + self.interval
        return self._folded.pop(key, 0)


def folded(count: int) -> str:
    """`` (N more since the last such line)`` for a log line, or nothing."""
    return f" ({count} more since the last such line)" if count else ""


class Fold(logging.Filter):
    """A filter for a library's logger that folds the records ``matches`` picks: one per interval, rewritten by
    ``line(record, folded)`` into one line (no traceback) at ``level``; the others are dropped."""

    def __init__(
        self, matches: Callable[[logging.LogRecord], bool], line: Callable[[logging.LogRecord, int], str], level: int
    ) -> None:
        super().__init__()
        self._matches = matches
        self._line = line
        self._level = level
        self._throttle = Throttle()

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._matches(record):
            return True
        if (more := self._throttle(None)) is None:
            return False
        record.msg, record.args = self._line(record, more), ()
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = self._level, logging.getLevelName(self._level)
        return True
