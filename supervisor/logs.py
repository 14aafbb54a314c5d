"""The process's log: every record made while serving a server (its handler, lifespan, background tasks) tagged
with that server's name and generation, written as text or one JSON object per line, and each server's recent
lines kept in a bounded buffer for ``tail``. Formatting and writing happen on a thread, never on the loop."""

from __future__ import annotations

import atexit
import collections
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Final

from supervisor.commands import TAIL_KEPT
from supervisor.handler import current_server

FORMATS: Final = ("text", "json")
RECENT_LINES: Final = TAIL_KEPT  # per server: at most RECENT_LINES * LINE_MAX characters each (~400 KB)
LINE_MAX: Final = 2048  # characters of one kept line (a traceback is cut, the log stream has it whole)


class ServerTag(logging.Filter):
    """Runs where the record is made: the context there says which server (and generation) it is about."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            ctx = current_server()
        except LookupError:
            # the coordinator's own lines about a server are written "server %s ...": they belong to its tail
            msg, args = record.msg, record.args
            named = isinstance(msg, str) and msg.startswith("server %s") and isinstance(args, tuple) and args
            record.server, record.generation = (str(record.args[0]), 0) if named else ("", 0)  # type: ignore[index]
        else:
            record.server, record.generation = ctx.name, ctx.generation
        return True


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int = 0) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(where)s: %(message)s")
        self._worker = f"w{worker}" if worker else ""  # a worker process's lines say which: [echo#3 w2], [w2]

    def format(self, record: logging.LogRecord) -> str:
        # the supervisor's own lines name their server already ("server echo failed: ..."): tag the others
        server = getattr(record, "server", "") if record.name != "supervisor" else ""
        gen = getattr(record, "generation", 0)
        tag = " ".join(filter(None, (f"{server}#{gen}" if server and gen else server, self._worker)))
        record.where = f" [{tag}]" if tag else ""
        return super().format(record)


class JsonFormatter(logging.Formatter):
    """One object per line, stable field names: ts (RFC 3339, UTC), level, logger, message, and server,
    generation, worker (a worker process's slot) and exc (the traceback) when there are any."""

    def __init__(self, worker: int = 0) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, object] = {
            "ts": ts, "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }  # fmt: skip
        if server := getattr(record, "server", ""):
            out["server"], out["generation"] = server, getattr(record, "generation", 0)
        if self._worker:
            out["worker"] = self._worker
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class Recent(logging.Handler):
    """The last RECENT_LINES lines of each server, as text; read from any thread."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(TextFormatter())
        self._lines: dict[str, collections.deque[tuple[int, str]]] = {}
        self._latest: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=RECENT_LINES)  # any server
        self._seq = 0
        self._cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if server := getattr(record, "server", ""):
            self.keep(server, self.format(record))

    def keep(self, server: str, line: str) -> None:
        """Keep one line of ``server`` (a workers parent keeps the lines its workers forward)."""
        line = line[:LINE_MAX]
        with self._cond:
            self._seq += 1
            self._lines.setdefault(server, collections.deque(maxlen=RECENT_LINES)).append((self._seq, line))
            self._latest.append((self._seq, server, line))
            self._cond.notify_all()

    def since(self, after: int) -> tuple[list[tuple[str, str]], int]:
        """The (server, line) pairs kept after sequence ``after`` (the last RECENT_LINES at most), and the cursor."""
        with self._cond:
            return [(server, line) for seq, server, line in self._latest if seq > after], self._seq

    def tail(self, server: str, n: int, after: int = 0) -> tuple[list[str], int]:
        """Up to the last ``n`` lines of ``server`` newer than sequence ``after``, and the sequence to follow from."""
        with self._cond:
            kept = [(seq, line) for seq, line in self._lines.get(server, ()) if seq > after][-n:] if n > 0 else []
            return [line for _, line in kept], self._seq

    def wait(self, after: int, timeout: float) -> None:
        """Block until a line newer than ``after`` is kept (any server), or ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after, timeout)


RECENT = Recent()


class _HandOff(logging.handlers.QueueHandler):
    """Queue the record as it is: the writer thread formats it (tracebacks included) and writes it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


_SETTINGS: list[str] = ["INFO", "text"]


def settings() -> tuple[str, str]:
    """The level and format :func:`setup` was given (a workers parent starts its workers with the same)."""
    return _SETTINGS[0], _SETTINGS[1]


def setup(level: str, fmt: str = "text", worker: int = 0) -> None:
    # Formatting and writing log lines happen on a thread, not on the event loop: a restart is ~1 ms,
    # and a traceback written to a slow pipe or terminal would otherwise be most of it.
    _SETTINGS[:] = [level, fmt]
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    RECENT.setFormatter(TextFormatter(worker))  # a worker's kept lines say which worker, in its parent's tail too
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, stream, RECENT, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # flushes what is queued before the process ends
    handoff = _HandOff(records)
    handoff.addFilter(ServerTag())
    root = logging.getLogger()
    root.addHandler(handoff)
    root.setLevel(level)
