"""``kind: protocol``: a server whose connections are the user's ``asyncio.Protocol`` objects, supervised like a
stream server's -- counted, tracked for the drain, their errors classified under ``on_handler_error``.

The user's class is subclassed once per generation (:func:`supervised`); the subclass wraps the other callbacks
(made, eof, lost, pause/resume writing) in a ``try``, and leaves ``data_received`` -- the per-request one -- the
user's own: the transport calls it with no frame of ours between (a wrapper frame was 1.7k of 24.9k instructions
per keep-alive request, callgrind on uvloop), unless ``idle_timeout`` is set (protocol_idle.py). An exception
from it is caught by the transport itself, on both loops, which closes the connection and hands the exception to
``connection_lost``: classified there (:func:`_user_raised`), and the loop's "Fatal error:
protocol.data_received() call failed." report is dropped (loopguard.py, :func:`supervised_error`). The subclass
also adds the slots of the generation's live list (protocol_connections.py): nothing else is allocated per
connection but the accepted-at float. A factory that returns instances of another class gets them moved to a
subclass of theirs, made once per class and generation, which cannot add slots: each of those connections gets a
Node.

The drain contract: an optional ``drain()`` method, called once per live connection when the generation drains
(a keep-alive HTTP protocol closes when idle, finishes its response then closes); without one the transport is
closed at once. The transports left at the drain's deadline are aborted; the drain ends when every
``connection_lost`` has been called (bounded by CANCEL_GRACE).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from supervisor.errors import StopServer
from supervisor.protocol_connections import LINKS, ProtocolConnections
from supervisor.protocol_idle import SILENCE, Silence, heard_by
from supervisor.throttle import folded

if TYPE_CHECKING:
    from supervisor.generation import Generation

LOGGER = logging.getLogger("supervisor")
_CALLBACKS = ("connection_made", "eof_received", "connection_lost", "pause_writing", "resume_writing")
# A class attribute of every subclass supervised() makes: its generation's error classifier (failed, below)
SUPERVISED = "_supervisor_failed"


def supervised(gen: Generation, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
    """The protocol factory the listener calls for ``gen``: the user's class, subclassed for this generation."""
    if isinstance(factory, type):
        return _subclass(gen, factory, own=True)
    made: dict[type, type] = {}

    def adopt() -> asyncio.BaseProtocol:
        proto = factory()
        cls = type(proto)
        if (sub := made.get(cls)) is None:
            sub = made[cls] = _subclass(gen, cls, own=False)
        proto.__class__ = sub
        return proto

    return adopt


def _subclass(gen: Generation, base: type, *, own: bool) -> type:
    """``own``: the subclass adds the slots the live list needs (protocol_connections.LINKS), else a Node stands in."""
    user = {name: getattr(base, name) for name in _CALLBACKS}
    made, eof, lost = user["connection_made"], user["eof_received"], user["connection_lost"]
    pause, resume = user["pause_writing"], user["resume_writing"]
    conns: ProtocolConnections = gen.conns
    loop = gen.loop
    nodes = conns.nodes
    idle = gen.plan.idle_timeout

    def failed(self: asyncio.BaseProtocol, exc: Exception) -> None:  # a handler error of this connection
        conns.abort(self if own else nodes.get(self))
        if isinstance(exc, StopServer):
            gen.stop(exc)
            return
        if _raised_in_transport(exc):
            gen.stats.client_errors["reset"] += 1  # the transport's own error (a write to a gone client)
            return
        gen.stats.handler_failed(exc, gen.loop.time())
        if gen.plan.on_handler_error == "restart" and not gen.stopped:
            gen.stop(exc)
        elif (more := gen.listener.throttle(type(exc).__name__)) is not None:
            LOGGER.warning(
                "server %s: handler error, connection closed: %r%s", gen.plan.name, exc, folded(more), exc_info=exc
            )

    def connection_made(self: asyncio.BaseProtocol, transport: asyncio.BaseTransport) -> None:
        late = False
        if gen.stopped:
            if not gen.listener.inherits(gen):
                gen.listener.adopt(transport)  # accepted in the instant this generation stopped: the next serves it
                return
            late = gen.draining  # inherited after its drain began (listener.py): drain it like the others
        if not gen.listener.admit_transport(transport):
            return
        node = self if own else conns.node(self, idle=bool(idle))
        conns.add(node, transport, loop.time())
        if idle:
            setattr(node, SILENCE, Silence(loop, transport, idle, gen.stats))
        try:
            made(self, transport)
        except Exception as exc:  # noqa: BLE001 - classified like any callback's error
            failed(self, exc)
        if late:
            conns.drain_late(self, node, spare_fresh=gen.spare_fresh)

    def eof_received(self: asyncio.Protocol) -> bool | None:
        try:
            return eof(self)  # type: ignore[no-any-return]
        except Exception as exc:  # noqa: BLE001
            failed(self, exc)
            return None

    # Called from inside the transport's write path: an abort there, at once, makes asyncio's _write_ready close
    # the connection a second time ("Exception in callback ..._call_connection_lost"): classified a step later.
    def pause_writing(self: asyncio.BaseProtocol) -> None:
        try:
            pause(self)
        except Exception as exc:  # noqa: BLE001
            loop.call_soon(failed, self, exc)

    def resume_writing(self: asyncio.BaseProtocol) -> None:
        try:
            resume(self)
        except Exception as exc:  # noqa: BLE001
            loop.call_soon(failed, self, exc)

    def connection_lost(self: asyncio.BaseProtocol, exc: Exception | None) -> None:
        if exc is not None and _user_raised(exc, self):
            failed(self, exc)  # data_received raised: the transport caught it and closed the connection
        elif isinstance(exc, OSError):
            gen.stats.client_errors["reset"] += 1
        try:
            lost(self, exc)
        except Exception as error:  # noqa: BLE001
            failed(self, error)
        finally:
            node = self if own else conns.forget(self)
            if idle and (silence := getattr(node, SILENCE, None)) is not None:
                silence.cancel()
            conns.remove(node, loop.time())

    namespace: dict[str, Any] = {
        # else the user's class's layout: its instances can be moved here
        "__slots__": ((*LINKS, SILENCE) if idle else LINKS) if own else (),
        "connection_made": connection_made,
        "eof_received": eof_received,
        "connection_lost": connection_lost,
        "pause_writing": pause_writing,
        "resume_writing": resume_writing,
        SUPERVISED: staticmethod(failed),
    }
    if idle:  # only then a frame of ours around data_received (a BufferedProtocol's buffer_updated): the read's time
        received = "data_received" if hasattr(base, "data_received") else "buffer_updated"
        namespace[received] = heard_by(getattr(base, received), loop, None if own else nodes)
    return type(base.__name__, (base,), namespace)


def _raised_in_transport(exc: BaseException) -> bool:
    """Raised by a transport call the protocol made (a write to a gone client): a frame of a transport follows the
    protocol's own in the traceback (the transport that caught it from data_received comes before)."""
    tb, mine = exc.__traceback__, False
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        if getattr(type(me), SUPERVISED, False):
            mine = True
        elif mine and isinstance(me, asyncio.BaseTransport):
            return True
        tb = tb.tb_next
    return False


def _user_raised(exc: BaseException, proto: asyncio.BaseProtocol) -> bool:
    """``exc``, given to connection_lost, was raised in ``proto``'s own data_received, not by the socket: any
    error but an OSError is, and an OSError is if a frame of the protocol is in its traceback (the loop's own
    socket errors have none)."""
    if not isinstance(exc, OSError):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_locals.get("self") is proto:
            return True
        tb = tb.tb_next
    return False


def supervised_error(context: dict[str, Any]) -> bool:
    """Whether a loop exception-handler context is an error a supervised protocol raised; if so it is handled here
    and the loop's own report is dropped. The exception's traceback names the protocol, whether the transport is
    plain or TLS (whose context names the TLS layer, not the user's protocol). Raised in data_received, the
    transport's "Fatal error ..." report (its context names the transport): its connection_lost classifies and logs
    it. Raised in a timer (the context names the handle) or a task of the protocol's (the future; reported when the
    task is collected: at once for a task nothing refers to, at the next garbage collection for one the protocol
    keeps): a handler error of that connection, classified now (bare asyncio only logs it)."""
    exc = context.get("exception")
    tb = exc.__traceback__ if isinstance(exc, Exception) else None
    while tb is not None:
        me = tb.tb_frame.f_locals.get("self")
        if (failed := getattr(type(me), SUPERVISED, None)) is not None:
            if "transport" not in context:  # else the transport's own report: it closes and calls connection_lost
                failed(me, exc)
            return True
        tb = tb.tb_next
    return False
