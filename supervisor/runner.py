"""Serving one configured server: its kept listener, and its generations with their connections.

``Listener``: the listening socket and one ``asyncio.Server`` on it for the server's whole life. Restarts
never close it: each accepted connection goes to the generation accepting now, or waits (parked) for the
next one. Closing a Server while an accept is under way makes asyncio drop that connection silently
(``Server._attach`` asserts), so a restart must not close anything; closing for good is done with care.

``Generation``: one start of the server: enter the handler's lifespan, take connections, and drain them
within a bound. Why we track connections ourselves: ``Server.wait_closed()`` returns at once on 3.11 and
uvloop, waits forever for idle clients on 3.12+, and ``close_clients()`` exists only on 3.13 (not uvloop).

    enter lifespan -> attach to the listener -> ready(address) -> wait for stop or failure
    -> detach -> on_end(reason) -> wait for the drain budget -> drain -> exit lifespan
"""

from __future__ import annotations

import asyncio
import logging
import socket
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, SupportsIndex

from supervisor.address import Address
from supervisor.errors import StopServer
from supervisor.handler import Handler, ServerContext, open_handler, set_current
from supervisor.plan import ServerPlan
from supervisor.state import ServerStats

LOGGER = logging.getLogger("supervisor")

# After cancelling leftover handlers, how long they may take to unwind before we abandon them.
CANCEL_GRACE = 1.0
# Reads that frame the next message: a handler waiting in one with nothing buffered is between requests.
# readexactly() is left alone: it is how handlers read a body they were promised.
_BOUNDARY_READS = frozenset({"readuntil", "read"})
# Errors that are the client's doing, not the server's: never a reason to restart a server.
_CLIENT_ERRORS = (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)

Reason = BaseException | None  # None: stopped on request; StopServer: stopped itself; other: failure


class _Reader(asyncio.StreamReader):
    """A StreamReader that reads end-of-stream once its generation drains, if it is between requests.

    Between requests = waiting in readline/readuntil/read with nothing buffered. That is how an idle
    keep-alive connection leaves its handler loop by itself at shutdown, while a handler in the middle
    of a request (bytes buffered, or waiting in readexactly) keeps its whole drain budget.
    """

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=limit, loop=loop)
        self.owner: Generation | None = None  # the generation serving this connection
        self._reading = ""  # the last read that had to wait for data
        self._fresh = True  # no byte received yet

    def _between_messages(self, func_name: str) -> bool:
        owner = self.owner
        return (
            owner is not None
            and owner.ctx.draining.is_set()
            and func_name in _BOUNDARY_READS
            and not self._buffer  # type: ignore[attr-defined]
            # At a restart, a connection accepted an instant before has its request still on the way:
            # the old generation serves it. At shutdown it is closed like any idle one.
            and not (self._fresh and owner.spare_fresh)
        )

    def _wait_for_data(self, func_name: str) -> Awaitable[None]:
        # Not a coroutine: every read that waits passes here, so hand back the base class's own
        # awaitable instead of wrapping it in one more coroutine frame per request.
        self._reading = func_name
        if self._between_messages(func_name):
            self.feed_eof()
            done: asyncio.Future[None] = self._loop.create_future()  # type: ignore[attr-defined]
            done.set_result(None)
            return done  # every caller re-checks _eof after waiting and reports end-of-stream
        return super()._wait_for_data(func_name)  # type: ignore[misc, no-any-return]

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        # Bytes arriving after an end-of-stream we injected: the handler has finished; drop them
        # (StreamReader asserts otherwise, and the loop would abort the connection mid-goodbye).
        if not self._eof:  # type: ignore[attr-defined]
            self._fresh = False
            super().feed_data(data)

    def eof_if_idle(self) -> None:
        # _waiter: a read is blocked right now (_reading names it; it is not cleared after the wait)
        if self._waiter is not None and self._between_messages(self._reading):  # type: ignore[attr-defined]
            self.feed_eof()


class Listener:
    """The kept listening socket of one server and the one asyncio.Server accepting on it."""

    def __init__(self, plan: ServerPlan, sock: socket.socket) -> None:
        self.plan = plan
        self.sock = sock
        host, port = sock.getsockname()[:2]
        self.address = Address(host, port)
        self.current: Generation | None = None
        self._next: asyncio.Future[Generation | None] | None = None
        self._server: asyncio.Server | None = None
        self._closed = False

    @classmethod
    def bind(cls, plan: ServerPlan) -> Listener:
        family, _, _, _, address = socket.getaddrinfo(
            plan.host, plan.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        # Not socket.create_server(): it leaves proto 0, accepted sockets inherit it, and asyncio sets
        # TCP_NODELAY only when proto is IPPROTO_TCP. Without it every keep-alive response waits ~40 ms
        # for a delayed ACK (Nagle), on asyncio's loop; uvloop sets it regardless.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(plan.backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"{exc.strerror} (while binding {Address(plan.host, plan.port)})") from None
        return cls(plan, sock)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(self._make_protocol, sock=self.sock, backlog=self.plan.backlog)

    def attach(self, gen: Generation) -> None:
        self.current = gen
        if self._next is not None:
            self._next.set_result(gen)
            self._next = None

    def detach(self, gen: Generation) -> None:
        if self.current is gen:
            self.current = None

    def close(self) -> None:
        """Stop accepting for good (idempotent), without dropping a connection accepted this instant."""
        if self._closed:
            return
        self._closed = True
        self.current = None
        if self._next is not None:
            self._next.set_result(None)  # parked connections are closed
            self._next = None
        server = self._server
        if server is None:
            self.sock.close()
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

    async def wait_closed(self, timeout: float) -> None:
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout)
            except TimeoutError:
                LOGGER.warning("server %s: wait_closed() did not return within %.1fs", self.plan.name, timeout)

    # -- the per-connection path: keep it lean ------------------------------------------------------------------

    def _make_protocol(self) -> asyncio.StreamReaderProtocol:
        # Bind the connection to the generation accepting now: one coroutine per connection, not two.
        gen = self.current
        serve = gen.serve if gen is not None else self._dispatch
        return asyncio.StreamReaderProtocol(_Reader(2**16, self._loop), serve, loop=self._loop)  # type: ignore[arg-type]

    async def _dispatch(self, reader: _Reader, writer: asyncio.StreamWriter) -> None:
        gen = self.current
        if gen is None:
            # restarting: the connection waits for the next generation instead of being refused
            if self._closed:
                writer.transport.abort()
                return
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            gen = await asyncio.shield(self._next)
            if gen is None:
                writer.transport.abort()
                return
        await gen.serve(reader, writer)


class Generation:
    """One start of a server. The supervisor creates it, runs ``run()`` as a task, and drives it."""

    def __init__(
        self,
        plan: ServerPlan,
        number: int,
        listener: Listener,
        stats: ServerStats,
        force: asyncio.Event,
        on_end: Callable[[Generation, Reason], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.plan = plan
        self.number = number
        self.ctx = ServerContext(plan.name, number, plan.options)
        self.stats = stats
        self.ready: asyncio.Future[Address] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self._listener = listener
        self._force = force
        self._on_end = on_end
        self._stop: asyncio.Future[Reason] = loop.create_future()
        self._drain_budget: asyncio.Future[float] = loop.create_future()
        self.spare_fresh = False  # see _Reader: set for a restart's drain
        self._conns: dict[asyncio.Task[Any], tuple[_Reader, asyncio.StreamWriter]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._cancelling = False
        self._handler: Handler | None = None
        self._ended = False

    @property
    def name(self) -> str:
        return f"{self.plan.name}#{self.number}"

    # -- requests from the supervisor ---------------------------------------------------------------------------

    def stop(self, reason: Reason = None) -> None:
        """Stop taking connections now (idempotent). The drain waits for :meth:`start_drain`."""
        if not self._stop.done():
            self._stop.set_result(reason)
            # detach at once, not when the task next runs: a connection accepted in between must
            # wait for the next generation, not join one that is about to drain
            self._stop_accepting()

    def start_drain(self, budget: float, *, restart: bool = False) -> None:
        if not self._drain_budget.done():
            self.spare_fresh = restart
            self._drain_budget.set_result(budget)

    # -- the task -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        set_current(self.ctx)
        try:
            async with open_handler(self.plan.target, self.plan.direct, self.plan.options) as handler:
                self._handler = handler
                if not self._stop.done():  # a stop requested while the lifespan entered: never attach
                    self._listener.attach(self)
                    self.ready.set_result(self._listener.address)
                try:
                    reason = await self._stop
                finally:
                    self._stop_accepting()
                self._end(reason)
                await self._drain(await self._drain_budget)
        except asyncio.CancelledError:
            if not self.ready.done():
                self.ready.cancel()
            self._end(None)
            raise
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
                self.ready.exception()  # the supervisor learns it via on_end; don't warn "never retrieved"
            if self._ended and not isinstance(exc, StopServer):
                # the lifespan (or its background task) failed after this generation had stopped
                LOGGER.error("server %s: failed while stopping: %r", self.name, exc, exc_info=exc)
            self._end(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._stop_accepting()
            self.ctx.draining.set()
            self._cancel_all()

    def _end(self, reason: Reason) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(self, reason)

    def _stop_accepting(self) -> None:
        self._listener.detach(self)

    # -- connections (the per-connection path: keep it lean) -----------------------------------------------------

    async def serve(self, reader: _Reader, writer: asyncio.StreamWriter) -> None:
        if self._stop.done():
            # accepted in the instant this generation stopped: the next one serves it
            await self._listener._dispatch(reader, writer)
            return
        task = asyncio.current_task()
        assert task is not None
        assert self._handler is not None
        set_current(self.ctx)  # the Server was made outside this generation: give handlers its context
        reader.owner = self
        conns = self._conns
        conns[task] = (reader, writer)
        self._idle.clear()
        stats = self.stats
        stats.active += 1
        stats.total += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            try:
                await self._handler(reader, writer)
            except StopServer as exc:
                self.stop(exc)
            except _CLIENT_ERRORS as exc:
                LOGGER.debug("server %s: client error: %r", self.plan.name, exc)
            except Exception as exc:
                stats.handler_errors += 1
                if self.plan.on_handler_error == "restart" and not self._stop.done():
                    self.stop(exc)  # the supervisor logs it as this server's failure
                else:
                    LOGGER.warning("server %s: handler error, connection closed: %r", self.plan.name, exc, exc_info=exc)
            writer.close()
            if writer.transport.get_write_buffer_size():
                # a slow reader is still owed bytes: stay in the registry, so the drain bounds it
                await writer.wait_closed()
        except asyncio.CancelledError:
            if not self._cancelling:
                raise
            # We cancelled it at the end of a drain. Ending quietly here is what stops 3.11.7 from
            # logging a CancelledError traceback per connection (CPython gh-113538).
            writer.transport.abort()
        except (ConnectionError, OSError):
            pass  # the client went away while we flushed
        finally:
            del conns[task]
            stats.active -= 1
            stats.observe_duration(loop.time() - started)
            if not writer.transport.is_closing():
                writer.close()
            if not conns:
                self._idle.set()

    async def _drain(self, budget: float) -> None:
        """Idle connections read EOF; busy ones get ``budget`` seconds; then the rest are cancelled."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        # Draining starts now, not at the stop: at shutdown each server waits for its turn.
        self.ctx.draining.set()
        for reader, _ in self._conns.values():
            reader.eof_if_idle()
        if self._conns and not self._force.is_set():
            idle = asyncio.ensure_future(self._idle.wait())
            force = asyncio.ensure_future(self._force.wait())
            try:
                await asyncio.wait((idle, force), timeout=budget, return_when=asyncio.FIRST_COMPLETED)
            finally:
                idle.cancel()
                force.cancel()
        if self._conns:
            peers = ", ".join(_peer(w) for _, w in list(self._conns.values())[:5])
            more = f" and {len(self._conns) - 5} more" if len(self._conns) > 5 else ""
            why = "skipped (second stop request)" if self._force.is_set() else f"budget {budget:.1f}s used up"
            LOGGER.warning(
                "server %s: drain %s, cancelling %d connection(s) of generation %d: %s%s",
                self.plan.name, why, len(self._conns), self.number, peers, more,
            )  # fmt: skip
            self.stats.drain_cancelled += len(self._conns)
            self._cancel_all()
            tasks = list(self._conns)
            if tasks:
                await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        self.stats.last_drain_seconds = loop.time() - started

    def _cancel_all(self) -> None:
        self._cancelling = True
        for task, (_, writer) in list(self._conns.items()):
            task.cancel()
            writer.transport.abort()


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
