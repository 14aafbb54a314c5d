"""``idle_timeout`` for ``kind: protocol``: a connection whose client sent nothing for that long is closed.

Only a server that sets it pays: its protocols' ``data_received`` is wrapped (one frame and one clock read per
read) and each connection gets a :class:`Silence`, one timer moved on when it fires, never re-armed per read: the
stream kind's rule (streams.Reader._idle_check). Without ``idle_timeout`` the user's ``data_received`` stays the
transport's direct call (protocols.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from supervisor.state import ServerStats

SILENCE = "_supervisor_silence"  # the slot (or Node slot) that holds a connection's Silence


class Silence:
    """When one connection's client last sent data, and the timer that looks at it when it could be due.

    At the deadline the transport is closed (``connection_lost(None)`` follows), or aborted if it still holds
    unsent data: a client that neither sends nor reads would keep it open for ever. Counted as
    ``supervisor_client_errors_total{reason="idle_timeout"}``, a client's doing, never the server's failure.
    """

    __slots__ = ("_loop", "_seconds", "_stats", "_timer", "_transport", "heard")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport, seconds: float, stats: ServerStats
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._seconds = seconds
        self._stats = stats
        self.heard = loop.time()
        self._timer: asyncio.TimerHandle | None = loop.call_at(self.heard + seconds, self._check)

    def _check(self) -> None:
        due = self.heard + self._seconds
        if due > self._loop.time():  # it spoke since: look again when that silence could be over
            self._timer = self._loop.call_at(due, self._check)
            return
        self._timer = None
        transport = self._transport
        if transport.is_closing():
            return
        self._stats.client_errors["idle_timeout"] += 1
        # not isinstance(transport, asyncio.WriteTransport): uvloop's transports are none of asyncio's classes
        if transport.get_write_buffer_size():  # type: ignore[attr-defined]  # a stream transport, on both loops
            transport.abort()  # type: ignore[attr-defined]
        else:
            transport.close()

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
