"""One start of a server: enter its lifespan, take connections, drain them, exit -- every phase bounded.

    enter lifespan (start_timeout) -> attach to the listener -> ready(address) -> wait for stop or failure
    -> detach -> on_end(reason) -> wait for the drain budget -> drain -> exit lifespan (what is left of
    the budget, at least EXIT_GRACE)

A stop while entering cuts the enter at once (there is nothing to drain yet). The force future (a second stop
signal) cuts whichever phase is running. The coordinator creates a Generation, runs ``run()`` as a task, and
drives it through :meth:`stop` and :meth:`start_drain`; the generation reports back only through ``on_end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from supervisor import protocols, session, sockets
from supervisor.address import Address
from supervisor.connections import Connections, until_empty
from supervisor.errors import StartTimeout, StopServer
from supervisor.handler import ProtocolFactory, ServerContext, open_handler, open_protocol, set_current
from supervisor.listener import Listener
from supervisor.plan import ServerPlan
from supervisor.protocol_connections import ProtocolConnections
from supervisor.state import ServerStats
from supervisor.streams import Reader

LOGGER = logging.getLogger("supervisor")

# The least time a lifespan gets to exit, even when the drain used the whole budget.
EXIT_GRACE = 1.0

Reason = BaseException | None  # None: stopped on request; StopServer: stopped itself; other: failure


class Generation:
    def __init__(
        self,
        plan: ServerPlan,
        number: int,
        listener: Listener,
        stats: ServerStats,
        force: asyncio.Future[None],
        on_end: Callable[[Generation, Reason], None],
    ) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.plan = plan
        self.number = number
        self.ctx = ServerContext(plan.name, number, plan.options)
        self.stats = stats
        self.ready: asyncio.Future[Address] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.spare_fresh = False  # a restart's drain: see streams.Reader
        self.conns: Any = (
            ProtocolConnections(plan.name, number, stats)
            if plan.kind == "protocol"
            else Connections(plan.name, number, stats)
        )
        self.listener = listener
        self.handler: Any = None  # the stream handler, or the protocol factory; set once the lifespan entered
        # kind protocol: what the listener calls per connection, set before attach (a placeholder until then)
        self.make_protocol: ProtocolFactory = asyncio.Protocol
        # the per-connection path (session.py): partials made once per generation, nothing per connection
        self.accept: Callable[[Reader, asyncio.StreamWriter], None] = functools.partial(session.accept, self)
        self.finished: Callable[[asyncio.Task[Any]], None] = functools.partial(session.finished, self)
        self.context = contextvars.copy_context()  # made again in run(), where current_server() is this one
        # a plain attribute, not ctx.draining.is_set(): every read that waits looks at it (streams.Reader)
        self.draining = False
        self._force = force
        self._on_end = on_end
        self._stop: asyncio.Future[Reason] = loop.create_future()
        self._drain_budget: asyncio.Future[float] = loop.create_future()
        self._ended = False
        self._phase: asyncio.Timeout | None = None  # the bounded phase running now (enter or exit)
        self._exit_by: float | None = None  # loop time the drain budget ends
        force.add_done_callback(self._forced)

    @property
    def name(self) -> str:
        return f"{self.plan.name}#{self.number}"

    @property
    def stopped(self) -> bool:
        """It has stopped taking connections (or is about to)."""
        return self._stop.done()

    # -- requests from the coordinator -----------------------------------------------------------------------------

    def stop(self, reason: Reason = None) -> None:
        """Stop taking connections now (idempotent). The drain waits for :meth:`start_drain`."""
        if not self._stop.done():
            self._stop.set_result(reason)
            # detach at once, not when the task next runs: a connection accepted in between must
            # wait for the next generation, not join one that is about to drain
            self.listener.detach(self)
            if not self.ready.done():
                self._cut_phase()  # still entering its lifespan: nothing to drain, don't wait for it

    def start_drain(self, budget: float, *, restart: bool = False) -> None:
        if not self._drain_budget.done():
            # a worker's retirement (a rolling reload) is a restart for its clients too: the others serve on
            self.spare_fresh = restart or sockets.served_after_drain()
            self._drain_budget.set_result(budget)

    def _forced(self, _: asyncio.Future[None]) -> None:
        self._cut_phase()

    def _cut_phase(self) -> None:
        if self._phase is not None and not self._phase.expired():
            self._phase.reschedule(asyncio.get_running_loop().time())

    # -- the task --------------------------------------------------------------------------------------------------

    def _set_draining(self) -> None:
        self.draining = True
        self.ctx.draining.set()

    async def run(self) -> None:
        set_current(self.ctx)
        self.context = contextvars.copy_context()  # what each connection's task runs in (a copy of it)
        opener = open_protocol if self.plan.kind == "protocol" else open_handler
        lifespan: AbstractAsyncContextManager[Any] = opener(self.plan.target, self.plan.direct, self.plan.options)
        try:
            handler = await self._enter(lifespan)
            if handler is None:
                self.ready.cancel()
                self._end(None)  # stopped while it was starting
                return
            try:
                await self._serve_and_drain(handler)
            except BaseException as exc:
                if not await self._exit(lifespan, exc):
                    raise
            else:
                await self._exit(lifespan, None)
        except asyncio.CancelledError:
            if not self.ready.done():
                self.ready.cancel()
            self._end(None)
            raise
        except BaseException as exc:
            if not self.ready.done():
                self.ready.set_exception(exc)
                self.ready.exception()  # the coordinator learns it via on_end; don't warn "never retrieved"
            if self._ended and not isinstance(exc, StopServer):
                # the lifespan (or its background task) failed after this generation had stopped
                LOGGER.error("server %s: failed while stopping: %r", self.name, exc, exc_info=exc)
            self._end(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._force.remove_done_callback(self._forced)
            if not self.ready.done():
                self.ready.cancel()  # stopped in the instant its lifespan finished entering
            self.listener.detach(self)
            self.listener.drained(self)
            self._set_draining()
            self.conns.cancel_all()

    async def _enter(self, lifespan: AbstractAsyncContextManager[Any]) -> Any:
        if self._stop.done():
            return None
        try:
            async with self._bounded(self.plan.start_timeout) as phase:
                return await lifespan.__aenter__()
        except TimeoutError:
            if not phase.expired():
                raise  # the lifespan's own TimeoutError: a failure like any other
            if self._stop.done() or self._force.done():
                return None
            raise StartTimeout(
                f"the lifespan did not finish entering within {self.plan.start_timeout:g}s; raise start_timeout, "
                "or find what its setup waits for (`supervisor ctl status`, the console's `where`)"
            ) from None

    async def _serve_and_drain(self, handler: Any) -> None:
        self.handler = handler
        if self.plan.kind == "protocol":
            self.make_protocol = protocols.supervised(self, handler)
        if not self._stop.done():  # a stop requested while the lifespan entered: never attach
            self.listener.attach(self)
            self.ready.set_result(self.listener.address)
        try:
            reason = await self._stop
        finally:
            self.listener.detach(self)
        self._end(reason)
        loop = asyncio.get_running_loop()
        budget = await self._drain_budget
        self._exit_by = loop.time() + budget
        self._set_draining()  # draining starts now, not at the stop: at shutdown each server waits its turn
        await self.conns.drain(budget, self._force, spare_fresh=self.spare_fresh)
        if self.listener.inherits(self):
            # closed for good: accepts under way reach this generation for a few more loop iterations (listener.py);
            # a drain that was over at once (no connection) must not leave them to be reset
            await self.listener.settled()
            await until_empty(self.conns.empty, self._force, max(0.0, self._exit_by - loop.time()))
        self.listener.drained(self)

    async def _exit(self, lifespan: AbstractAsyncContextManager[Any], exc: BaseException | None) -> bool:
        """Exit the lifespan within what is left of the budget; True if it suppressed ``exc``."""
        loop = asyncio.get_running_loop()
        exit_by = self._exit_by if self._exit_by is not None else loop.time() + self.plan.shutdown_timeout
        budget = max(exit_by - loop.time(), EXIT_GRACE)
        try:
            async with self._bounded(budget) as phase:
                if exc is None:
                    await lifespan.__aexit__(None, None, None)
                    return False
                return bool(await lifespan.__aexit__(type(exc), exc, exc.__traceback__))
        except TimeoutError:
            if not phase.expired():
                raise
            LOGGER.warning("server %s: the lifespan did not exit within %.1fs; cancelled it", self.name, budget)
            if exc is not None:
                raise exc from exc.__cause__
            return False

    @contextlib.asynccontextmanager
    async def _bounded(self, seconds: float) -> AsyncIterator[asyncio.Timeout]:
        """A phase cut at ``seconds``, by a stop while entering, or by force; it is the current one only inside."""
        loop = asyncio.get_running_loop()
        due = loop.time() if self._force.done() else loop.time() + seconds
        self._phase = asyncio.timeout_at(due)
        try:
            async with self._phase as phase:
                yield phase
        finally:
            self._phase = None

    def _end(self, reason: Reason) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(self, reason)
