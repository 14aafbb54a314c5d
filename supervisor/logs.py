"""The process's log: every record made while serving a server (its handler, lifespan, background tasks) tagged
with that server's name and generation, written as text or one JSON object per line, and each server's recent
lines kept in a bounded buffer for ``tail``. Formatting and writing happen on a thread, never on the loop."""

from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import logging
import logging.config
import logging.handlers
import queue
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from supervisor.commands import TAIL_KEPT
from supervisor.handler import current_server

RECENT_LINES: Final = TAIL_KEPT  # per server: at most RECENT_LINES * LINE_MAX characters each (~400 KB)
LINE_MAX: Final = 2048  # characters of one kept line (a traceback is cut, the log stream has it whole)
_WORKER = [0]  # this process's worker slot (0: the only process, or a workers parent): setup() sets it


def tag(record: logging.LogRecord) -> None:
    """Set ``record.server`` and ``record.generation`` from where the record is made: the context there says which
    server (and generation) it is about. Any format may name them: ``%(server)s``."""
    try:
        ctx = current_server()
    except LookupError:
        # the coordinator's own lines about a server are written "server %s ...": they belong to its tail
        msg, args = record.msg, record.args
        named = isinstance(msg, str) and msg.startswith("server %s") and isinstance(args, tuple) and args
        record.server, record.generation = (str(record.args[0]), 0) if named else ("", 0)  # type: ignore[index]
    else:
        record.server, record.generation = ctx.name, ctx.generation


class ServerTag(logging.Filter):
    """:func:`tag` as a filter, for a handler of a program that embeds the supervisor without :func:`setup`."""

    def filter(self, record: logging.LogRecord) -> bool:
        tag(record)
        return True


def _tag_every_record() -> None:
    """Tag records as they are made (a record factory), whichever handler then gets them: ours, or a dictConfig's
    (whose QueueHandler would otherwise format them on a thread where the server's context is gone)."""
    made = logging.getLogRecordFactory()
    if getattr(made, "tags_servers", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = made(*args, **kwargs)
        tag(record)
        return record

    factory.tags_servers = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(where)s: %(message)s")
        worker = _WORKER[0] if worker is None else worker
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
    generation, worker (a worker process's slot) and exc (the traceback) when there are any. A dictConfig may
    name it: ``formatters: {json: {"()": supervisor.logs.JsonFormatter}}``."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = _WORKER[0] if worker is None else worker

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


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """What :func:`setup` was given (a workers parent starts its workers with the same)."""

    level: str = "INFO"
    format: str = "text"
    dict_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_SETTINGS = [Settings()]


def settings() -> Settings:
    return _SETTINGS[0]


def setup(level: str | None, fmt: str = "text", worker: int = 0, dict_config: Mapping[str, Any] | None = None) -> None:
    """Tag, queue and write this process's records. With ``dict_config`` (``logging.dict_config``), the user's
    loggers and handlers decide instead of ours, and ``level`` (None: INFO unless the mapping sets the root's)
    overrides the root's level; the per-server tail is kept either way. Raises ValueError (dictConfig's own, with
    its cause) if the mapping cannot be applied."""
    _WORKER[0] = worker
    _tag_every_record()
    root = logging.getLogger()
    writers: list[logging.Handler] = [RECENT]
    if dict_config:
        root.setLevel(logging.INFO)  # what the mapping's root section may change
        # our "supervisor" logger exists by now: dictConfig's default would disable it (and every library's)
        logging.config.dictConfig({"disable_existing_loggers": False, **dict_config})
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
        writers.append(stream)
    level = level or (logging.getLevelName(root.level) if dict_config else "INFO")
    _SETTINGS[0] = Settings(level, fmt, dict(dict_config or {}))
    # Formatting and writing our log lines happen on a thread, not on the event loop: a restart is ~1 ms,
    # and a traceback written to a slow pipe or terminal would otherwise be most of it.
    RECENT.setFormatter(TextFormatter(worker))  # a worker's kept lines say which worker, in its parent's tail too
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *writers, respect_handler_level=True)
    listener.start()
    atexit.register(listener.stop)  # flushes what is queued before the process ends
    root.addHandler(_HandOff(records))
    root.setLevel(level)
