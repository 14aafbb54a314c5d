"""One generation of one server: enter the handler's lifespan, accept on a dup of the kept socket,
track every connection, and drain them within a bound.

Why we track connections ourselves: ``Server.wait_closed()`` returns at once on 3.11 and uvloop, waits
forever for idle clients on 3.12+, and ``close_clients()`` exists only on 3.13 (not on uvloop).

Lifecycle (one task per generation)::

    enter lifespan -> start accepting -> ready(address) -> wait for stop or failure
    -> stop accepting -> on_end(reason) -> wait for the drain budget -> drain -> exit lifespan -> wait_closed
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from supervisor.errors import StopServer
from supervisor.handler import Handler, ServerContext, open_handler, set_current
from supervisor.plan import ServerPlan
from supervisor.state import ServerStats

LOGGER = logging.getLogger("supervisor")

# After cancelling leftover handlers, how long they may take to unwind before we abandon them.
CANCEL_GRACE = 1.0
# Bound on Server.wait_closed() once our own connections are gone (3.12+ waits for transports).
WAIT_CLOSED_GRACE = 1.0

Reason = BaseException | None  # None: stopped on request; StopServer: stopped itself; other: failure


class _Reader(asyncio.StreamReader):
    """A StreamReader that reads end-of-stream once its generation drains and it has nothing buffered.

    That is how an idle keep-alive connection leaves its handler loop by itself at shutdown, while a
    handler in the middle of reading a request (bytes buffered) keeps its whole drain budget.
    """

    __slots__ = ("_draining",)

    def __init__(self, limit: int, loop: asyncio.AbstractEventLoop, draining: asyncio.Event) -> None:
        super().__init__(limit=limit, loop=loop)
        self._draining = draining

    async def _wait_for_data(self, func_name: str) -> None:
        if self._draining.is_set() and not self._buffer:  # type: ignore[attr-defined]
            self.feed_eof()
            return  # every caller re-checks _eof after waiting and reports end-of-stream
        await super()._wait_for_data(func_name)  # type: ignore[misc]

    def eof_if_idle(self) -> None:
        # a read is pending (a waiter exists) and nothing is buffered: the handler waits for a new request
        if self._waiter is not None and not self._buffer:  # type: ignore[attr-defined]
            self.feed_eof()


class Generation:
    """One start of a server. The supervisor creates it, runs ``run()`` as a task, and drives it."""

    def __init__(
        self,
        plan: ServerPlan,
        number: int,
        lsock: socket.socket,
        stats: ServerStats,
        force: asyncio.Event,
        on_end: Callable[[Generation, Reason], None],
    ) -> None:
        self.plan = plan
        self.number = number
        self.ctx = ServerContext(plan.name, number, plan.options)
        self.stats = stats
        self.ready: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self._lsock = lsock
        self._force = force
        self._on_end = on_end
        self._stop: asyncio.Future[Reason] = asyncio.get_running_loop().create_future()
        self._drain_budget: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._conns: dict[asyncio.Task[Any], tuple[_Reader, asyncio.StreamWriter]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._cancelling = False
        self._server: asyncio.Server | None = None
        self._handler: Handler | None = None
        self._ended = False

    @property
    def name(self) -> str:
        return f"{self.plan.name}#{self.number}"

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- requests from the supervisor ---------------------------------------------------------------------------

    def stop(self, reason: Reason = None) -> None:
        """Stop accepting now (idempotent). The drain waits for :meth:`start_drain`."""
        if not self._stop.done():
            self._stop.set_result(reason)

    def start_drain(self, budget: float) -> None:
        if not self._drain_budget.done():
            self._drain_budget.set_result(budget)

    # -- the task -----------------------------------------------------------------------------------------------

    async def run(self) -> None:
        set_current(self.ctx)
        try:
            async with open_handler(self.plan.target, self.plan.direct, self.plan.options) as handler:
                self._handler = handler
                loop = asyncio.get_running_loop()
                self._server = await loop.create_server(
                    self._make_protocol, sock=self._lsock.dup(), backlog=self.plan.backlog
                )
                host, port = self._lsock.getsockname()[:2]
                self.ready.set_result((host, port))
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
                self.ready.exception()  # the supervisor reads it via on_end; don't warn "never retrieved"
            if self._ended and not isinstance(exc, StopServer):
                # the lifespan's exit failed after we already stopped: the next generation is running
                LOGGER.error("server %s: lifespan exit failed: %r", self.name, exc, exc_info=exc)
            self._end(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._stop_accepting()
            self._cancel_all()
            if self._server is not None:
                await self._wait_closed()

    def _end(self, reason: Reason) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(self, reason)

    def _stop_accepting(self) -> None:
        self.ctx.draining.set()
        if self._server is not None and self._server.is_serving():
            self._server.close()

    # -- connections (the per-connection path: keep it lean) -----------------------------------------------------

    def _make_protocol(self) -> asyncio.StreamReaderProtocol:
        loop = asyncio.get_running_loop()
        reader = _Reader(2**16, loop, self.ctx.draining)
        return asyncio.StreamReaderProtocol(reader, self._serve_connection, loop=loop)  # type: ignore[arg-type]

    async def _serve_connection(self, reader: _Reader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        assert self._handler is not None
        conns = self._conns
        conns[task] = (reader, writer)
        self._idle.clear()
        stats = self.stats
        stats.active += 1
        stats.total += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._handler(reader, writer)
        except asyncio.CancelledError:
            if not self._cancelling:
                raise
            # We cancelled it at the end of a drain. Ending quietly here is what stops 3.11.7 from
            # logging a CancelledError traceback per connection (CPython gh-113538).
            writer.transport.abort()
        except StopServer as exc:
            self.stop(exc)
        except Exception as exc:
            stats.handler_errors += 1
            if self.plan.on_handler_error == "restart":
                LOGGER.error("server %s: handler error, restarting the server: %r", self.plan.name, exc)
                self.stop(exc)
            else:
                LOGGER.warning("server %s: handler error, connection closed: %r", self.plan.name, exc, exc_info=exc)
        finally:
            del conns[task]
            stats.active -= 1
            stats.observe_duration(loop.time() - started)
            writer.close()
            if not conns:
                self._idle.set()

    async def _drain(self, budget: float) -> None:
        """Idle connections read EOF; busy ones get ``budget`` seconds; then the rest are cancelled."""
        loop = asyncio.get_running_loop()
        started = loop.time()
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
            LOGGER.warning(
                "server %s: drain budget %.1fs used up, cancelling %d connection(s): %s%s",
                self.name, budget, len(self._conns), peers, more,
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

    async def _wait_closed(self) -> None:
        assert self._server is not None
        try:
            await asyncio.wait_for(self._server.wait_closed(), WAIT_CLOSED_GRACE)
        except TimeoutError:
            LOGGER.warning("server %s: wait_closed() did not return within %.1fs", self.name, WAIT_CLOSED_GRACE)


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
