"""What the event loop itself says and suffers, bounded: accept() failures for lack of file descriptors, asyncio's
per-connection warnings, and how long the loop was blocked.

* ``socket.accept() out of system resource`` (EMFILE and friends): the selector loop logs one traceback per
  backlog slot per one-second retry (measured: 1.4 M lines in 8 s with ``ulimit -n 256``). Here it is counted
  per server, logged once per interval with the count, and asyncio's own retry resumes accepting. uvloop
  never reports it (libuv accepts and closes such connections itself).
* ``socket.send() raised exception.``: asyncio warns once per write to a connection already lost; a handler
  broadcasting to a gone client would fill the log. Folded the same way.
* Loop lag: a task that sleeps :data:`LAG_INTERVAL` and measures how late it wakes. A handler calling blocking
  code (``time.sleep(3)``) shows up as a warning naming how long, in ``supervisor_event_loop_lag_seconds``, and
  makes ``/healthz`` fail while the worst lag in the last :data:`LAG_WINDOW` is over ``max_loop_lag``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from supervisor.protocols import supervised_error
from supervisor.state import ServerStats
from supervisor.throttle import Fold, Throttle, folded

LOGGER = logging.getLogger("supervisor")

LAG_INTERVAL = 0.25  # seconds between two lag measurements
LAG_WINDOW = 30.0  # the lag gauge and /healthz look at the worst lag this far back
LAG_WARNING = 0.5  # a lag over this is logged (at most once per throttle interval)
LAG_FLOOR = 0.01  # measurements below this are noise, not kept
ACCEPT_EPISODE = 0.5  # accept failures of one listener this close together count once (one per backlog slot)
_ACCEPT_MESSAGE = "socket.accept() out of system resource"
_SEND_MESSAGE = "socket.send() raised exception."


class LoopGuard:
    _previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None = None

    def __init__(self, servers: Callable[[int], tuple[str, ServerStats] | None], max_lag: float) -> None:
        self._servers = servers  # listening fd -> (server name, its stats), None for sockets not ours
        self.max_lag = max_lag
        self._throttle = Throttle()
        # (when, lag) of the measurements over LAG_FLOOR, within LAG_WINDOW: at most one per LAG_INTERVAL
        self._lags: deque[tuple[float, float]] = deque(maxlen=int(LAG_WINDOW / LAG_INTERVAL) + 1)
        self._counted_at: dict[int, float] = {}  # listening fd -> when its last accept failure was counted

    # -- the worst recent lag, read by metrics and /healthz (on the loop) ---------------------------------------------

    def worst_lag(self) -> float:
        self._prune()
        return max((lag for _, lag in self._lags), default=0.0)

    def _prune(self) -> None:
        cutoff = time.monotonic() - LAG_WINDOW
        while self._lags and self._lags[0][0] < cutoff:
            self._lags.popleft()

    def blocked(self) -> bool:
        return self.worst_lag() > self.max_lag

    # -- installed for the supervisor's life ---------------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        previous = self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._on_loop_error)
        noise = Fold(_send_warning, _send_line, logging.WARNING)
        asyncio_logger = logging.getLogger("asyncio")
        asyncio_logger.addFilter(noise)
        watcher = loop.create_task(self._watch(), name="supervisor:loop-lag")
        try:
            yield
        finally:
            watcher.cancel()
            asyncio_logger.removeFilter(noise)
            # Not the previous handler yet: asyncio's accept retries, scheduled while descriptors ran out, still
            # fire once per failed accept after the listener closed; they must stay quiet for the loop's life.
            loop.set_exception_handler(functools.partial(_after_shutdown, previous))

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if _stale_accept_retry(context):
            return
        if context.get("message") != _ACCEPT_MESSAGE or not isinstance(exc, OSError):
            if not supervised_error(context):  # else its connection_lost classifies and logs it (protocols.py)
                _pass_on(self._previous, loop, context)
            return
        sock = context.get("socket")
        fd = sock.fileno() if sock is not None else -1
        found = self._servers(fd)
        name = found[0] if found else "metrics/console"
        # asyncio reports one failure per backlog slot in the same instant: count the episode, not the slots
        now = time.monotonic()
        if found and now - self._counted_at.get(fd, -ACCEPT_EPISODE) >= ACCEPT_EPISODE:
            self._counted_at[fd] = now
            found[1].accept_errors += 1
        if (more := self._throttle(("accept", name, exc.errno))) is not None:
            LOGGER.error(
                "server %s: cannot accept connections: [Errno %s] %s; retrying every second by itself%s "
                "(raise the open-files limit, ulimit -n / LimitNOFILE=, or lower max_connections)",
                name, exc.errno, os.strerror(exc.errno or errno.EMFILE), folded(more),
            )  # fmt: skip

    async def _watch(self) -> None:
        while True:
            started = time.monotonic()
            await asyncio.sleep(LAG_INTERVAL)
            lag = time.monotonic() - started - LAG_INTERVAL
            if lag > LAG_FLOOR:
                self._lags.append((time.monotonic(), lag))
            self._prune()
            if lag > LAG_WARNING and (more := self._throttle("lag")) is not None:
                LOGGER.warning(
                    "event loop blocked for %.2fs: a handler or lifespan ran blocking code on the loop%s",
                    lag, folded(more),
                )  # fmt: skip


class Listening(Protocol):
    @property
    def fileno(self) -> int: ...


class Server(Protocol):
    """What :class:`ServerFinder` reads of a configured server (child.Child)."""

    @property
    def name(self) -> str: ...

    @property
    def stats(self) -> ServerStats: ...

    @property
    def listener(self) -> Listening | None: ...


class ServerFinder:
    """The server listening on a file descriptor, for accept errors: a dict, rebuilt when it does not know the fd
    or knows it wrong (a restart keeps the socket; a reload may move a server to a new one). A scan per lookup
    was O(servers) per failed accept, and asyncio reports one failure per backlog slot."""

    def __init__(self, servers: Sequence[Server]) -> None:
        self._servers = servers
        self._by_fd: dict[int, Server] = {}

    def server_at(self, fd: int) -> tuple[str, ServerStats] | None:
        found = self._by_fd.get(fd)
        if found is None or found.listener is None or found.listener.fileno != fd:
            self._by_fd = {s.listener.fileno: s for s in self._servers if s.listener is not None}
            found = self._by_fd.get(fd)
        return (found.name, found.stats) if found is not None else None


def _stale_accept_retry(context: dict[str, Any]) -> bool:
    """asyncio's one-second accept retry firing for a listening socket closed since (fd -1): nothing to do."""
    handle = context.get("handle")
    callback = getattr(handle, "_callback", None)
    return isinstance(context.get("exception"), ValueError) and getattr(callback, "__name__", "") == "_start_serving"


def _after_shutdown(
    previous: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
    loop: asyncio.AbstractEventLoop,
    context: dict[str, Any],
) -> None:
    if not _stale_accept_retry(context):
        _pass_on(previous, loop, context)


def _pass_on(
    handler: Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object] | None,
    loop: asyncio.AbstractEventLoop,
    context: dict[str, Any],
) -> None:
    if handler is not None:
        handler(loop, context)
    else:
        loop.default_exception_handler(context)


def _send_warning(record: logging.LogRecord) -> bool:
    return record.msg == _SEND_MESSAGE


def _send_line(record: logging.LogRecord, more: int) -> str:
    return f"{_SEND_MESSAGE[:-1]} (a handler writing to connections already lost){folded(more)}"
