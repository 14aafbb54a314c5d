"""``idle_timeout`` for ``kind: protocol``: a connection whose client sent nothing for that long is closed.

Only a server that sets it pays: its protocols' ``data_received`` (a BufferedProtocol's ``buffer_updated``) is
wrapped (one frame and one clock read per read) and each connection gets a :class:`Silence`, one timer moved on
when it fires, never re-armed per read: the stream kind's rule (streams.Reader._idle_check). Without
``idle_timeout`` the user's ``data_received`` stays the transport's direct call (protocols.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from supervisor.state import ServerStats

SILENCE = "_supervisor_silence"  # the slot (or IdleNode slot) that holds a connection's Silence
CLOSE_GRACE = 1.0  # an idle connection's close, then its abort


class Silence:
    """When one connection's client last sent data, and the timer that looks at it when it could be due.

    As the stream kind's rule, only time the server waits for the client counts: a protocol that paused reading
    (it computes, or its output waits) is not, nor one whose output is still going out (its unsent bytes changed
    since the last look: a long download). Busy at one look, its silence is counted from the next (when it ended
    in between is not known): up to twice the timeout after it. Time spent computing an answer with reading on
    and nothing written counts: pause_reading() meanwhile, or set idle_timeout above the slowest answer. What the
    kernel has taken is sent: its close (a FIN after that data) loses none of it.

    At the deadline the transport is closed (``connection_lost(None)`` follows), or aborted if its output has not
    moved: a client that neither sends nor reads would keep it open for ever. A close that does not end within
    CLOSE_GRACE is aborted too: TLS's closing handshake waits for the client (up to its own 30 s), and a TLS
    transport's unsent count leaves out what waits beneath it. Counted as
    ``supervisor_client_errors_total{reason="idle_timeout"}``, a client's doing, never the server's failure.
    """

    __slots__ = ("_busy", "_loop", "_seconds", "_stats", "_timer", "_transport", "_unsent", "heard")

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: Any, seconds: float, stats: ServerStats) -> None:
        self._loop = loop
        self._transport = transport  # a stream transport: asyncio's or uvloop's (none of asyncio's classes)
        self._seconds = seconds
        self._stats = stats
        self._unsent = 0
        self._busy = False
        self.heard = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_at(self.heard + seconds, self._check)

    def _check(self) -> None:
        transport, now = self._transport, self._loop.time()
        if transport.is_closing():  # closed meanwhile: connection_lost cancels this
            self._timer = None
            return
        unsent = transport.get_write_buffer_size()
        busy = not transport.is_reading() or bool(unsent and unsent != self._unsent)
        if busy or self._busy:  # not waiting for the client (or not known since when): the server's own time
            self.heard = now
        self._unsent, self._busy = unsent, busy
        due = self.heard + self._seconds
        if due > now:  # it spoke since, or the server was busy: look again when that silence could be over
            self._timer = self._loop.call_at(due, self._check)
            return
        self._stats.client_errors["idle_timeout"] += 1
        if unsent:
            self._timer = None
            transport.abort()
        else:
            transport.close()
            self._timer = self._loop.call_later(CLOSE_GRACE, transport.abort)  # connection_lost cancels it

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def heard_by(
    data_received: Callable[[Any, bytes], None], loop: asyncio.AbstractEventLoop, nodes: dict[Any, Any] | None
) -> Callable[[Any, bytes], None]:
    """The user's ``data_received``, noting the time first. The Silence is in the protocol's own slot, or with
    ``nodes`` in its Node's. What the user's method raises passes through unchanged: the transport catches it and
    ``connection_lost`` classifies it (a frame of the protocol's own, as before)."""
    if nodes is None:

        def received(self: Any, data: bytes) -> None:
            silence = getattr(self, SILENCE, None)
            if silence is not None:  # None: not admitted, or handed to the next generation
                silence.heard = loop.time()
            data_received(self, data)

        return received

    def received_by_node(self: Any, data: bytes) -> None:
        silence = getattr(nodes.get(self), SILENCE, None)
        if silence is not None:
            silence.heard = loop.time()
        data_received(self, data)

    return received_by_node
