"""Per-connection stream plumbing: the reader that drains and times out, and the writer with a bound (what is the
client's doing when they raise: client_faults.py).

Nothing here knows about generations or the supervisor: a reader is told, through :class:`DrainState`, whether
the server it belongs to is draining. Everything on the per-read and per-write path is kept to an attribute
check or two; the costlier work (timers, traceback walks) happens only when a limit or an error is hit.
"""

from __future__ import annotations

import asyncio
import functools
import types
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol, SupportsIndex

from supervisor.errors import IdleTimeout

# Reads that frame the next message: a handler waiting in one with nothing buffered is between messages.
# readexactly() is left alone: it is how handlers read a body they were promised.
_BOUNDARY_READS = frozenset({"readuntil", "read"})
# At a restart, a connection accepted less than this long ago that has not sent a byte yet is given to
# the old generation to serve: its first request is on the way. Older silent ones are between messages.
FRESH_WINDOW = 1.0
HIGH_WATER = 64 * 1024  # asyncio's and uvloop's default high-water mark of a transport's write buffer


class DrainState(Protocol):
    """What a reader needs from the generation serving it."""

    @property
    def draining(self) -> bool: ...

    @property
    def spare_fresh(self) -> bool: ...


_BASE_WAIT = asyncio.StreamReader._wait_for_data  # type: ignore[attr-defined]
_BASE_FEED = asyncio.StreamReader.feed_data


class Reader(asyncio.StreamReader):
    """A StreamReader that reads end-of-stream once its server drains, if it is between messages.

    Between messages = waiting in readline/readuntil/read with nothing buffered. That is how an idle
    keep-alive connection leaves its handler loop by itself at shutdown, while a handler in the middle
    of a message (bytes buffered, or waiting in readexactly) keeps its whole drain budget.
    With ``idle_timeout``, a client that sends nothing for that long is ended the same way when it is
    between messages, and with :class:`IdleTimeout` raised into the read when it is not (a slowloris).

    Per-connection state is class defaults until it changes (measured: each instance attribute is ~8-16 bytes of
    its __dict__ per idle connection), and the path costs one Python call more than the base class's per read that
    waits (the check in ``_wait_for_data``) and per segment received (``feed_data`` notes the first byte). The
    class is never changed on the serving path: an object whose ``__class__`` was assigned loses the interpreter's
    specialized attribute loads (measured with callgrind, keep-alive hello on uvloop: 82.7k instructions per
    request with the old switch to a receiving class and a bounded writer class, 67.7k for bare asyncio streams; a
    switched object's attribute loads are 2.3x slower on 3.11, 3.12 and 3.13 alike). Only an end-of-stream we
    inject switches it, to :class:`_Ended` (late bytes dropped): the connection is finishing by then.
    """

    owner: DrainState | None = None  # the generation serving this connection
    accepted_at = 0.0  # loop time
    ended_by = ""  # a CLIENT_REASONS value once the supervisor ended the connection itself
    drained = False  # the drain ended the read: the end-of-stream is ours, not the client's
    admitted = False  # counted against max_connections already (parked through a restart)
    _reading = ""  # the last read that had to wait for data; "" = none yet (no byte can have arrived)
    _fresh = True  # no byte received yet (what a restart's drain spares, FRESH_WINDOW)
    _idle_timeout = 0.0
    _last_rx = 0.0
    _idle_timer: asyncio.TimerHandle | None = None

    # -- draining ------------------------------------------------------------------------------------------------

    def _between_messages(self, func_name: str) -> bool:
        owner = self.owner
        return (
            owner is not None
            and owner.draining
            and func_name in _BOUNDARY_READS
            and not self._buffer  # type: ignore[attr-defined]
            and not (owner.spare_fresh and self._fresh and self._age() < FRESH_WINDOW)
        )

    def _age(self) -> float:
        return self._loop.time() - self.accepted_at  # type: ignore[attr-defined,no-any-return]

    def _wait_for_data(self, func_name: str) -> Awaitable[None]:
        # Not a coroutine: every read that waits passes here, so hand back the base class's own
        # awaitable instead of wrapping it in one more coroutine frame per request.
        self._reading = func_name
        if self._idle_timeout:
            self._last_rx = self._loop.time()  # type: ignore[attr-defined]  # silence counts from now
        owner = self.owner
        if owner is not None and owner.draining and self._between_messages(func_name):
            self._end_read()
            done: asyncio.Future[None] = self._loop.create_future()  # type: ignore[attr-defined]
            done.set_result(None)
            return done  # every caller re-checks _eof after waiting and reports end-of-stream
        return _BASE_WAIT(self, func_name)  # type: ignore[no-any-return]

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self._fresh = False  # a byte arrived: a restart's drain no longer spares it
        _BASE_FEED(self, data)

    def _end_read(self) -> None:
        """Our end-of-stream: the handler reads b"" now; bytes still coming are dropped."""
        self.drained = True
        self.feed_eof()
        self.__class__ = _Ended

    def eof_if_idle(self) -> bool:
        """End the read now if the handler waits between messages (``_waiter``: a read is blocked)."""
        if self._waiter is not None and self._between_messages(self._reading):  # type: ignore[attr-defined]
            self._end_read()
            return True
        return False

    # -- idle timeout ----------------------------------------------------------------------------------------------

    def arm_idle_timeout(self, seconds: float) -> None:
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[attr-defined]
        self._idle_timeout = seconds
        self._last_rx = loop.time()
        self._idle_timer = loop.call_later(seconds, self._idle_check)

    def disarm(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _idle_check(self) -> None:
        # One timer per connection, moved on only when it fires: nothing is rescheduled per read.
        loop: asyncio.AbstractEventLoop = self._loop  # type: ignore[attr-defined]
        if self._waiter is None:  # type: ignore[attr-defined]
            # The handler is not waiting for the client (it computes, sleeps, or flushes a response): the client
            # owes nothing now, so this time does not count as the client's silence.
            self._last_rx = loop.time()
        due = self._last_rx + self._idle_timeout
        if loop.time() < due:
            self._idle_timer = loop.call_at(due, self._idle_check)
            return
        self._idle_timer = None
        self.ended_by = "idle_timeout"
        if self._waiter is not None and not self._buffer:  # type: ignore[attr-defined]
            self._end_read()  # between messages: a clean end-of-stream, the handler may still say goodbye
            self.drained = False  # ... but not the drain's: ended_by says why
            return
        self.set_exception(IdleTimeout(f"no data from the client for {self._idle_timeout:g}s"))
        transport = self._transport  # type: ignore[attr-defined]
        if transport is not None:
            transport.abort()


class _Ended(Reader):
    """A Reader after an end-of-stream we gave: bytes a client still sends are dropped (StreamReader asserts
    otherwise, and the loop would abort the connection mid-goodbye)."""

    _fresh = False

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        pass


class BoundedWriter(asyncio.StreamWriter):
    """A StreamWriter whose connection is closed once more than ``limit`` bytes wait to be sent.

    Checked only while the transport is above its high-water mark (``pause_writing`` was called), so a
    write costs one attribute test more than the base class's; :func:`bound_writer` puts that mark at or
    below the limit. A handler that never awaits ``drain()`` (a broadcast to a client that never reads) cannot
    grow the process past the limit. ``limit`` is a class attribute of a subclass per limit (nothing per
    connection), :func:`stream_protocol` makes the writer of that class, and the reader is the stdlib writer's.
    """

    limit = 0

    def write(self, data: Any) -> None:
        # Writes after the abort below are the transport's to refuse: asyncio drops them (its warning about
        # them is folded by the loop guard), uvloop raises, which ends a handler that would write on for nothing.
        transport = self._transport  # type: ignore[attr-defined]
        transport.write(data)
        if self._protocol._paused:  # type: ignore[attr-defined]
            self._check(transport)

    def writelines(self, data: Any) -> None:
        transport = self._transport  # type: ignore[attr-defined]
        transport.writelines(data)
        # always checked: 3.12.1's selector transport never pauses the protocol from writelines()
        self._check(transport)

    def _check(self, transport: asyncio.WriteTransport) -> None:
        if transport.get_write_buffer_size() > self.limit:
            reader = self._reader  # type: ignore[attr-defined]
            if isinstance(reader, Reader):
                reader.ended_by = "write_buffer"
            transport.abort()


@functools.lru_cache(maxsize=64)
def _bounded(limit: int) -> type[BoundedWriter]:
    return type("BoundedWriter", (BoundedWriter,), {"limit": limit})


@functools.lru_cache(maxsize=64)
def stream_protocol(limit: int) -> type[asyncio.StreamReaderProtocol]:
    """The StreamReaderProtocol whose connections get a writer bounded at ``limit`` (0: the stdlib's writer),
    made as that class rather than switched to it (see :class:`Reader`). Its ``connection_made`` is the stdlib's
    own code, run with ``StreamWriter`` naming the bounded class: no copy of it to keep in step per version."""
    if not limit:
        return asyncio.StreamReaderProtocol
    base = asyncio.StreamReaderProtocol.connection_made
    names = {**base.__globals__, "StreamWriter": _bounded(limit)}
    made = types.FunctionType(base.__code__, names, base.__name__, base.__defaults__, base.__closure__)
    return type("BoundedStreamProtocol", (asyncio.StreamReaderProtocol,), {"connection_made": made})


def bound_writer(writer: asyncio.StreamWriter, limit: int) -> None:
    """Give ``writer`` the bound ``limit``: made so by :func:`stream_protocol` (switched only for a connection
    parked through a reload that changed the limit)."""
    if getattr(type(writer), "limit", 0) != limit:
        writer.__class__ = _bounded(limit)
    if limit < HIGH_WATER * 2:
        # drain() waits from half the limit on, and the check runs past it: a smaller limit is a real bound too
        writer.transport.set_write_buffer_limits(high=limit // 2)
