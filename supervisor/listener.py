"""The kept listening socket of one server and the one ``asyncio.Server`` accepting on it, for the server's life.

Restarts never close it: each accepted connection goes to the generation accepting now, or is parked until the
next one attaches. Closing a Server while an accept is under way makes asyncio drop that connection silently
(``Server._attach`` asserts), so a restart must not close anything; closing for good is done with care.
``max_connections`` counts parked connections too: a long restart gap cannot pile them up without bound.
Once closed for good, a connection accepted in that instant (or parked) goes to the generation that stopped last
while it drains -- its *heir* -- instead of a reset: with workers the others share the socket, and this one had
already taken it from the accept queue (a rolling reload's old worker reset such connections).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable
from typing import Protocol

from supervisor import sockets
from supervisor.parked import Parked
from supervisor.plan import ServerPlan
from supervisor.state import ServerStats
from supervisor.streams import Reader, stream_protocol
from supervisor.throttle import Throttle, folded
from supervisor.tls import Terminator

LOGGER = logging.getLogger("supervisor")


class Generation(Protocol):
    """What the listener needs of the generation it hands connections to (generation.Generation)."""

    @property
    def plan(self) -> ServerPlan: ...

    @property
    def accept(self) -> Callable[[Reader, asyncio.StreamWriter], None]: ...

    def make_protocol(self) -> asyncio.BaseProtocol: ...


class Listener:
    def __init__(self, plan: ServerPlan, sock: socket.socket, stats: ServerStats) -> None:
        self.plan = plan
        self.sock = sock
        self.stats = stats
        self.address = sockets.address_of(sock)
        self._file = sockets.identity(sock)  # a unix socket's file, removed when it closes for good
        self._tls = Terminator(plan.tls, stats) if plan.tls else None
        self.current: Generation | None = None
        self._heir: Generation | None = None  # the generation that stopped last, until its drain is over
        self._next: asyncio.Future[Generation | None] | None = None
        self._server: asyncio.Server | None = None
        self._closed = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # the socket is closed
        self._limit = plan.max_connections or 1 << 62
        self.throttle = Throttle()  # this server's log lines that clients can trigger at will
        self._parked: set[asyncio.Task[None]] = set()  # connections waiting for the next generation

    @classmethod
    def bind(cls, plan: ServerPlan, stats: ServerStats) -> Listener:
        return cls(plan, sockets.bind(plan), stats)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        tls = self._tls
        self._server = await self._loop.create_server(
            self._make_protocol, sock=self.sock, backlog=self.plan.backlog,
            ssl=tls.outer if tls else None, ssl_handshake_timeout=tls.timeout if tls else None,
        )  # fmt: skip

    @property
    def fileno(self) -> int:
        return self.sock.fileno()

    def attach(self, gen: Generation) -> None:
        if gen.plan is not self.plan:  # a reload's new generation: its limits apply to what is accepted from now
            self._configure(gen.plan)
        self.current = gen
        if self._next is not None:
            self._next.set_result(gen)
            self._next = None

    def _configure(self, plan: ServerPlan) -> None:
        if plan.backlog != self.plan.backlog:
            self.sock.listen(plan.backlog)  # Linux resizes the accept queue of a listening socket in place
        if plan.tls is not None and self._tls is not None:
            self._tls.use(plan.tls)  # handshakes from now on: the new certificate, CAs and client_auth
        if plan.unix and plan.mode is not None and plan.mode != self.plan.mode:
            os.chmod(plan.unix, plan.mode)
        self.plan = plan
        self._limit = plan.max_connections or 1 << 62

    def detach(self, gen: Generation) -> None:
        if self.current is gen:
            self.current = None
            self._heir = gen

    def drained(self, gen: Generation) -> None:
        """``gen``'s drain is over: it can be nobody's heir now."""
        if self._heir is gen:
            self._heir = None

    def inherits(self, gen: Generation) -> bool:
        """``gen`` (stopped) takes a connection all the same: this listener closed for good and ``gen`` drains."""
        return self._closed and self._heir is gen

    def close(self) -> None:
        """Stop accepting for good (idempotent), without dropping a connection accepted this instant."""
        if self._closed:
            return
        self._closed = True
        self.current = None
        sockets.remove_file(self.address.path, self._file)  # new clients: no such file, as after a clean exit
        if self._next is not None:
            self._next.set_result(self._heir)  # parked connections: the draining generation serves them
            self._next = None
        server = self._server
        if server is None:
            self.sock.close()
            self.closed.set_result(None)
            return
        loop = server.get_loop()
        if isinstance(loop, BaseSelectorEventLoop):
            loop.remove_reader(self.sock.fileno())  # no new accepts from here on
            # Accepts already under way attach to the Server in their task's first step, within the
            # next iteration; closing it before then makes asyncio drop them. uvloop has no such gap.
            loop.call_soon(loop.call_soon, self._close_now)
        else:
            self._close_now()

    def _close_now(self) -> None:
        assert self._server is not None
        self._server.close()
        self.sock.close()
        if not self.closed.done():
            self.closed.set_result(None)

    async def settled(self) -> None:
        """Closed for good, and every accept that was under way has reached a generation: the socket closes within
        two iterations of close() (selector loops), then a connection takes one to be made and one more for a
        stream connection's dispatch task to start."""
        await asyncio.shield(self.closed)
        for _ in range(3):
            await asyncio.sleep(0)

    async def wait_closed(self, timeout: float) -> None:
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except TimeoutError:
                LOGGER.warning("server %s: wait_closed() did not return within %.1fs", self.plan.name, timeout)

    # -- the per-connection path: keep it lean ------------------------------------------------------------------

    def admit(self, writer: asyncio.StreamWriter) -> bool:
        """False (and the connection closed, counted, logged at most once per interval) past max_connections."""
        return self.admit_transport(writer.transport)

    def admit_transport(self, transport: asyncio.BaseTransport) -> bool:
        stats = self.stats
        if stats.active + stats.parked < self._limit:
            return True
        stats.rejected += 1
        transport.close()
        if (more := self.throttle("rejected")) is not None:
            LOGGER.warning(
                "server %s: max_connections (%d) reached, closing new connections%s",
                self.plan.name, self.plan.max_connections, folded(more),
            )  # fmt: skip
        return False

    def _make_protocol(self) -> asyncio.BaseProtocol:
        if self.plan.kind == "protocol":
            gen = self.current
            return gen.make_protocol() if gen is not None else Parked(self, self.stats)
        # Bind the connection to the generation accepting now. Its accept() is a plain function: the protocol
        # calls it when the connection is made, and it starts the handler's task itself (session.py).
        gen = self.current
        accept = gen.accept if gen is not None else self.park
        reader = Reader(self.plan.read_limit, self._loop)
        return stream_protocol(self.plan.max_write_buffer)(reader, accept, loop=self._loop)  # type: ignore[arg-type]

    def when_next(self, callback: Callable[[Generation | None], None]) -> bool:
        """Call ``callback`` with the next generation to attach (closed for good: the heir, if any); False if
        closed with no heir."""
        if self._closed:
            if self._heir is None:
                return False
            callback(self._heir)
            return True
        if self.current is not None:
            callback(self.current)
            return True
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        self._next.add_done_callback(lambda next_gen: callback(next_gen.result()))
        return True

    def adopt(self, transport: asyncio.BaseTransport) -> None:
        """A protocol-kind connection its generation stopped before it could serve it: park it for the next."""
        parked = Parked(self, self.stats)
        transport.set_protocol(parked)
        parked.connection_made(transport)

    def park(self, reader: Reader, writer: asyncio.StreamWriter) -> None:
        """A connection accepted while no generation takes them (a restart): wait for the next, in a task."""
        task = self._loop.create_task(self.dispatch(reader, writer))
        self._parked.add(task)
        task.add_done_callback(self._parked.discard)

    async def dispatch(self, reader: Reader, writer: asyncio.StreamWriter) -> None:
        """Serve a connection with the generation accepting now, or park it until the next one attaches."""
        gen = self.current if not self._closed else self._heir
        if gen is None:
            # restarting: the connection waits for the next generation instead of being refused
            if self._closed:
                writer.transport.abort()  # nobody is left to serve it
                return
            if not self.admit(writer):
                return
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            self.stats.parked += 1
            try:
                gen = await asyncio.shield(self._next)
            finally:
                self.stats.parked -= 1
            reader.admitted = True  # it has waited its turn: the next generation must not turn it away
            if gen is None:
                writer.transport.abort()
                return
        if gen.plan.kind != "stream":  # a reload made it a protocol server while this stream connection waited
            writer.transport.abort()
            return
        gen.accept(reader, writer)
