"""A ``kind: protocol`` connection accepted while no generation takes them (a restart gap): held, reading
paused, until the next generation attaches, then handed to it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from supervisor.state import ServerStats


class ParkingLot(Protocol):
    """What a parked connection needs of its listener (listener.Listener)."""

    def admit_transport(self, transport: asyncio.BaseTransport) -> bool: ...

    def when_next(self, callback: Callable[[Any], None]) -> bool: ...


class Parked(asyncio.Protocol):
    """A protocol-kind connection accepted while no generation takes them: reading paused until the next one
    attaches, then handed to it (``set_protocol``, ``connection_made``, what arrived meanwhile) -- nothing refused,
    nothing lost. uvloop starts reading after ``connection_made`` returns, so a first segment may still arrive:
    it is kept (reading is paused again) and given to the real protocol first."""

    def __init__(self, lot: ParkingLot, stats: ServerStats) -> None:
        self._lot = lot
        self._stats = stats
        self._transport: asyncio.BaseTransport | None = None
        self._early: list[bytes] = []
        self._eof = False

    def data_received(self, data: bytes) -> None:
        self._early.append(data)
        if self._transport is not None:
            self._transport.pause_reading()  # type: ignore[attr-defined]

    def eof_received(self) -> bool:
        self._eof = True
        return True  # keep the transport open: the next generation's protocol decides

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._lot.admit_transport(transport):
            return
        self._transport = transport
        transport.pause_reading()  # type: ignore[attr-defined]
        self._stats.parked += 1
        if not self._lot.when_next(self._attach):
            self._stats.parked -= 1
            transport.abort()  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._transport = None
            self._stats.parked -= 1

    def _attach(self, gen: Any) -> None:
        transport = self._transport
        if transport is None:
            return  # the client left while it waited
        self._transport = None
        self._stats.parked -= 1
        if gen is None:
            transport.abort()  # type: ignore[attr-defined]
            return
        proto = gen.make_protocol()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if self._early and not transport.is_closing():
            _feed(proto, b"".join(self._early))
        if self._eof and not transport.is_closing():
            if not proto.eof_received():
                transport.close()
        elif not transport.is_closing():
            transport.resume_reading()  # type: ignore[attr-defined]


def _feed(proto: asyncio.BaseProtocol, data: bytes) -> None:
    """Hand ``data`` to ``proto`` as its transport would: ``data_received``, or a BufferedProtocol's own buffer
    filled and ``buffer_updated``, as many times as its buffer needs (it has no data_received)."""
    if not isinstance(proto, asyncio.BufferedProtocol):
        proto.data_received(data)  # type: ignore[attr-defined]
        return
    view = memoryview(data)
    while view:
        buffer = memoryview(proto.get_buffer(len(view))).cast("B")
        n = min(len(buffer), len(view))
        if not n:  # an empty buffer: asyncio's transports treat it as the protocol's error
            raise RuntimeError("get_buffer() returned an empty buffer")
        buffer[:n] = view[:n]
        proto.buffer_updated(n)
        view = view[n:]
