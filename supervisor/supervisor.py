"""The running tree: one coordinator that starts, restarts and stops server generations.

``Supervisor.serve()`` has three phases: startup (servers in dependency order, each waiting for the
ones it comes ``after``), wait (react to generations that end, backoff timers and control requests),
and shutdown (stop accepting everywhere, then drain one server at a time in reverse start order).

Every generation runs as a task of one ``asyncio.TaskGroup``, but the TaskGroup is not the supervisor:
a generation never lets an exception escape; it reports how it ended through ``on_end``, and this
coordinator, the only writer of the tree's state, decides what happens next. The TaskGroup cancelling
everything is only the last resort if our own code is broken.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from supervisor.address import Address
from supervisor.errors import GaveUp, StopServer
from supervisor.generation import CANCEL_GRACE, Generation, Reason, describe, traceback_of
from supervisor.listener import Listener
from supervisor.loopguard import LoopGuard
from supervisor.plan import Plan, ServerPlan
from supervisor.restart import Backoff, Intensity, should_restart
from supervisor.state import ChildState, ChildStatus, ServerStats, TreeSnapshot

LOGGER = logging.getLogger("supervisor")

Command = Literal["restart", "stop", "start", "shutdown"]
COMMANDS: tuple[Command, ...] = ("restart", "stop", "start", "shutdown")
# How long a control command waits for the server to be running (or stopped) again.
CONTROL_TIMEOUT = 10.0


@dataclass(eq=False, slots=True)
class Child:
    """The supervisor's record of one configured server; outlives its generations."""

    plan: ServerPlan
    backoff: Backoff
    stats: ServerStats = field(default_factory=ServerStats)
    state: ChildState = ChildState.STOPPED
    wanted: bool = True
    listener: Listener | None = None  # the kept listening socket, bound once
    gen: Generation | None = None  # the generation starting or accepting now
    live: set[Generation] = field(default_factory=set)  # every generation whose task still runs
    generation: int = 0
    not_before: float = 0.0  # loop time before which a restart must not start
    started_at: float | None = None
    address: str = ""
    restarts: int = 0
    last_error: str = ""
    served: bool = False  # a generation has become ready since the server was (re)started by hand
    start_failures: int = 0  # failed starts in a row before it ever served
    # Log lines of a failure whose restart is immediate: written once the next generation serves,
    # since formatting and writing them costs more than the whole restart.
    held: list[Callable[[], None]] = field(default_factory=list)

    def hold(self, level: int, msg: str, *args: object, exc_info: BaseException | None = None) -> None:
        self.held.append(functools.partial(LOGGER.log, level, msg, *args, exc_info=exc_info))

    def flush(self) -> None:
        held, self.held = self.held, []
        for write in held:
            write()

    @property
    def name(self) -> str:
        return self.plan.name


@dataclass(frozen=True, slots=True)
class _Ended:
    child: Child
    gen: Generation | None  # None: the socket could not even be bound
    reason: Reason


@dataclass(frozen=True, slots=True)
class _Ready:
    child: Child
    gen: Generation


@dataclass(frozen=True, slots=True)
class _Control:
    command: str
    child: Child
    handled: asyncio.Future[None]  # resolved once the coordinator acted on it


_Event = _Ended | _Ready | _Control | None  # None only wakes the loop (stop request, backoff timer)


class Supervisor:
    def __init__(
        self,
        plan: Plan,
        *,
        clock: Callable[[], float] | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.plan = plan
        self.children = [Child(p, Backoff(p.backoff, rand)) for p in plan.servers]
        self._by_name = {c.name: c for c in self.children}
        self._clock = clock
        self._snapshot = TreeSnapshot(tuple(self._status(c) for c in self.children))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[_Event] | None = None
        self._stop = asyncio.Event()
        # done on a second stop request: cuts every wait (drains, lifespan enters and exits, the shutdown)
        self._force: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # replaced by a fresh future on every publish, so no waiter can miss a change
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tg: asyncio.TaskGroup | None = None
        self._shutting_down = False
        self._gave_up: str | None = None
        self._wake_at: float | None = None  # the earliest pending backoff wake-up
        self.stop_reason = ""
        # The readiness handshake: resolves with every bound address once all servers serve.
        # Created here, so construct the Supervisor inside the loop that will run it.
        self.ready: asyncio.Future[list[Address]] = asyncio.get_running_loop().create_future()
        self.guard = LoopGuard(self._server_at, plan.supervisor.max_loop_lag)

    def _server_at(self, fd: int) -> tuple[str, ServerStats] | None:
        """The server listening on ``fd`` (for the loop guard's accept errors)."""
        for c in self.children:
            if c.listener is not None and c.listener.fileno == fd:
                return c.name, c.stats
        return None

    # -- public, on the loop ------------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def request_stop(self, reason: str) -> None:
        """Begin the ordered shutdown; a second request skips the waiting (force)."""
        if self._stop.is_set():
            if not self._force.done():
                LOGGER.warning("second stop request (%s): skipping the drain wait", reason)
                self._force.set_result(None)
            return
        self.stop_reason = reason
        self._stop.set()
        self._post(None)

    def snapshot(self) -> TreeSnapshot:
        """Thread-safe: the last published immutable snapshot."""
        return self._snapshot

    async def control(self, command: str, name: str | None = None) -> str:
        """Run a console/ctl command. Returns a one-line result; raises ValueError for a bad request."""
        if command not in COMMANDS:
            raise ValueError(f"unknown command '{command}'; expected one of: {', '.join(COMMANDS)}")
        if command == "shutdown":
            self.request_stop("control: shutdown")
            return "shutting down"
        child = self._by_name.get(name or "")
        if child is None:
            raise ValueError(f"no server named '{name}'; servers: {', '.join(self._by_name)}")
        if self._shutting_down:
            raise ValueError("the supervisor is shutting down")
        if command == "start" and child.wanted and child.state is not ChildState.FAILED:
            return f"{name} is already {child.state.value}"
        before = child.generation
        handled = asyncio.get_running_loop().create_future()
        self._post(_Control(command, child, handled))
        try:
            async with asyncio.timeout(CONTROL_TIMEOUT):
                await handled
        except TimeoutError:
            return f"{name}: no answer within {CONTROL_TIMEOUT:g}s (the supervisor may be shutting down)"
        if command == "stop":
            await self._wait_until(lambda: child.state in (ChildState.STOPPED, ChildState.FAILED))
            return f"stopped {name}"
        await self._wait_until(
            lambda: (
                (child.state is ChildState.RUNNING and child.generation > before)
                or child.state in (ChildState.FAILED, ChildState.BACKOFF, ChildState.STOPPED)
            )
        )
        if child.state is ChildState.RUNNING:
            return f"{'started' if command == 'start' else 'restarted'} {name} ({child.address})"
        return f"{name} did not come up: {child.state.value}: {child.last_error}"

    def submit(self, command: str, name: str | None = None) -> concurrent.futures.Future[str]:
        """Thread-safe entry for the console thread: run :meth:`control` on the supervisor's loop."""
        assert self._loop is not None, "the supervisor is not running"
        return asyncio.run_coroutine_threadsafe(self.control(command, name), self._loop)

    # -- serve: startup -> wait -> shutdown ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until stopped. Raises GaveUp after an ordered shutdown if restarts exceeded the limit."""
        self._loop = asyncio.get_running_loop()
        self._events = asyncio.Queue()
        sup = self.plan.supervisor
        self._intensity = Intensity(sup.max_restarts, sup.restart_window, self.now)
        try:
            with self.guard.installed(self._loop):
                async with asyncio.TaskGroup() as tg:
                    self._tg = tg
                    try:
                        await self._run()
                    finally:
                        await self._shutdown()
        finally:
            for child in self.children:
                self._release(child)
            if not self.ready.done():
                self.ready.cancel()
        if self._gave_up:
            raise GaveUp(self._gave_up)

    async def _run(self) -> None:
        assert self._events is not None
        while not self._stop.is_set():
            await self._reconcile()
            if not self.ready.done() and self._all_up():
                addresses = [c.listener.address for c in self.children if c.listener and c.wanted]
                LOGGER.info("supervisor ready: %d server(s) serving", len(addresses))
                self.ready.set_result(addresses)
                self._publish()
            event = await self._events.get()
            if isinstance(event, _Ended):
                self._ended(event.child, event.gen, event.reason)
            elif isinstance(event, _Ready):
                self._ready(event.child, event.gen)
            elif isinstance(event, _Control):
                self._control(event.command, event.child)
                if not event.handled.done():
                    event.handled.set_result(None)

    def _all_up(self) -> bool:
        return all(c.state is ChildState.RUNNING for c in self.children if c.wanted)

    async def _reconcile(self) -> None:
        """Start every wanted server that is down, due, and whose ``after`` servers are running.

        Starts don't wait for each other here: readiness comes back as a _Ready event, so one slow
        lifespan never holds up restarts, control requests or the shutdown of the others.
        """
        for child in self.children:
            if self._stop.is_set():
                return
            if not child.wanted or child.gen is not None:
                continue
            if (wait := child.not_before - self.now()) > 0:
                # A timer may fire a hair early by loop.time() (uvloop rounds to milliseconds):
                # always leave a wake-up behind for a server that is not due yet.
                self._wake_in(wait)
                continue
            if all(self._by_name[d].state is ChildState.RUNNING for d in child.plan.after):
                await self._start(child)

    def _wake_in(self, seconds: float) -> None:
        assert self._loop is not None
        due = self._loop.time() + max(seconds, 0.001)
        if self._wake_at is None or due < self._wake_at:
            self._wake_at = due
            self._loop.call_at(due, self._woken, due)

    def _woken(self, due: float) -> None:
        if self._wake_at == due:
            self._wake_at = None
        self._post(None)

    async def _start(self, child: Child) -> None:
        assert self._tg is not None
        if child.listener is None:
            try:
                listener = Listener.bind(child.plan, child.stats)
            except OSError as exc:
                self._post(_Ended(child, None, exc))
                child.gen = _PENDING  # keeps reconcile from retrying before the failure is handled
                self._set_state(child, ChildState.STARTING)
                return
            child.listener = listener
            await listener.start()
        child.generation += 1
        gen = Generation(child.plan, child.generation, child.listener, child.stats, self._force, self._on_end)
        child.gen = gen
        child.live.add(gen)
        self._set_state(child, ChildState.STARTING)  # published with the new generation's number
        gen.task = self._tg.create_task(gen.run(), name=f"server:{child.name}")
        gen.task.add_done_callback(lambda _t: child.live.discard(gen))
        gen.ready.add_done_callback(lambda _f: self._post(_Ready(child, gen)))

    def _ready(self, child: Child, gen: Generation) -> None:
        if child.gen is not gen or gen.ready.cancelled() or gen.ready.exception() is not None:
            return  # failed or replaced before it was ready: its _Ended event tells the story
        child.address = str(gen.ready.result())
        child.started_at = self.now()
        child.served = True
        child.start_failures = 0
        self._set_state(child, ChildState.RUNNING)
        child.flush()
        LOGGER.info("server %s listening on %s (generation %d)", child.name, child.address, gen.number)

    # -- events ---------------------------------------------------------------------------------------------------

    def _post(self, event: _Event) -> None:
        if self._events is not None:
            self._events.put_nowait(event)

    def _on_end(self, gen: Generation, reason: Reason) -> None:
        self._post(_Ended(self._by_name[gen.plan.name], gen, reason))

    def _ended(self, child: Child, gen: Generation | None, reason: Reason) -> None:
        if self._shutting_down:
            return  # the shutdown drains every live generation itself, in order
        if gen is not None:
            # a restart never waits for the old connections: they drain beside the new generation
            gen.start_drain(child.plan.shutdown_timeout, restart=True)
        if child.gen is not (gen or _PENDING):
            # stopped on purpose (group restart, console) before it ended by itself
            if reason is not None and not isinstance(reason, StopServer | asyncio.CancelledError):
                child.last_error = describe(reason)
                LOGGER.error("server %s failed while already restarting: %s", child.name, child.last_error)
            return
        child.gen = None
        child.started_at, uptime = None, (self.now() - child.started_at if child.started_at else 0.0)
        failed = not isinstance(reason, StopServer)
        if failed:
            child.last_error = describe(reason)
            child.hold(logging.ERROR, "server %s failed: %s", child.name, child.last_error)
            if (exc := traceback_of(reason)) is not None:
                child.hold(logging.ERROR, "server %s: traceback of the failure: %r", child.name, exc, exc_info=exc)
        else:
            child.hold(logging.INFO, "server %s stopped itself", child.name)
        if failed and not child.served:
            child.start_failures += 1
            if child.start_failures > child.plan.start_retries:
                self._never_started(child)
                return
        if not should_restart(child.plan.restart, failed):
            child.flush()
            child.wanted = False
            self._release(child)
            self._set_state(child, ChildState.FAILED if failed else ChildState.STOPPED)
            LOGGER.warning("server %s (%s) will not be restarted", child.name, child.plan.restart)
            return
        if not self._intensity.record():
            child.flush()
            sup = self.plan.supervisor
            self._gave_up = (
                f"giving up: more than {sup.max_restarts} restarts within {sup.restart_window:g}s "
                f"(last: server {child.name}: {child.last_error})"
            )
            LOGGER.critical("%s", self._gave_up)
            self._set_state(child, ChildState.FAILED)
            self.request_stop("gave up")
            return
        delay = child.backoff.next_delay(uptime)
        siblings = self._affected(child)
        for sib in reversed(siblings):  # reverse start order, like a shutdown
            if sib.gen is not None:
                self._stop_generation(sib)
            sib.stats.restarts["strategy"] += 1
            sib.restarts += 1
        child.stats.restarts["failure" if failed else "exit"] += 1
        child.restarts += 1
        due = self.now() + delay
        for c in (child, *siblings):
            c.not_before = due
            self._set_state(c, ChildState.BACKOFF)
        also = f" with {', '.join(s.name for s in siblings)}" if siblings else ""
        child.hold(
            logging.WARNING,
            "server %s restarting in %.3fs%s (%d recent restarts)", child.name, delay, also, self._intensity.recent,
        )  # fmt: skip
        if delay > 0:
            child.flush()

    def _never_started(self, child: Child) -> None:
        """supervisord's FATAL: a server that failed every start is given up on, not retried forever."""
        child.flush()
        child.wanted = False
        self._release(child)
        self._set_state(child, ChildState.FAILED)
        what = f"server {child.name} never started: {child.start_failures} failed start(s) (start_retries: "
        what += f"{child.plan.start_retries}), last: {child.last_error}"
        if child.plan.restart != "permanent":
            LOGGER.error("%s; it stays stopped", what)
            return
        self._gave_up = f"giving up: {what}"
        LOGGER.critical("%s", self._gave_up)
        self.request_stop("gave up")

    def _affected(self, child: Child) -> list[Child]:
        """Siblings restarted with ``child`` under the strategy, in start order."""
        strategy = self.plan.supervisor.strategy
        if strategy == "one_for_all":
            return [c for c in self.children if c is not child and c.wanted]
        if strategy == "rest_for_one":
            return [c for c in self.children if c.plan.rank > child.plan.rank and c.wanted]
        return []

    def _control(self, command: str, child: Child) -> None:
        if self._shutting_down:
            return
        if command == "stop":
            child.wanted = False
            if child.gen is not None:
                self._stop_generation(child)
            self._release(child)
            self._set_state(child, ChildState.STOPPED)
            LOGGER.info("server %s stopped by control request", child.name)
            return
        if command == "restart":
            if child.gen is not None:
                self._stop_generation(child)
            child.stats.restarts["manual"] += 1
            child.restarts += 1
        child.wanted = True
        child.not_before = 0.0
        if child.state is ChildState.FAILED:
            child.backoff.failures = 0
            child.start_failures = 0
            child.served = False
        self._set_state(child, ChildState.STARTING if child.gen is None else child.state)
        LOGGER.info("server %s %s by control request", child.name, "restarting" if command == "restart" else "starting")

    def _stop_generation(self, child: Child) -> None:
        gen, child.gen = child.gen, None
        if gen is not None and gen is not _PENDING:
            gen.stop(None)
            gen.start_drain(child.plan.shutdown_timeout, restart=True)

    # -- shutdown -------------------------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        # With thousands of connections ending at once, the cyclic GC rescans all their objects again
        # and again (measured: 5,000 idle connections drain in ~0.25 s frozen vs ~0.6 s not). Nothing
        # that exists now needs collecting before the drain is over.
        gc.freeze()
        try:
            await self._ordered_shutdown()
        finally:
            gc.unfreeze()

    async def _ordered_shutdown(self) -> None:
        self._shutting_down = True
        self._publish()  # views see the shutdown at once, whatever state the servers are in
        sup = self.plan.supervisor
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + sup.shutdown_timeout
        LOGGER.info("shutting down (%s): stop accepting on every server", self.stop_reason or "exit")
        for child in reversed(self.children):
            child.gen = None
            for gen in child.live:  # each stops taking connections, then waits for its drain budget
                gen.stop(None)
            self._release(child)  # new clients are refused now, not left in a backlog nobody reads
            if child.live and child.state is not ChildState.FAILED:
                self._set_state(child, ChildState.STOPPING)
        for child in reversed(self.children):  # drain one server at a time, dependents first
            left = max(0.0, deadline - loop.time())
            for gen in child.live:
                gen.start_drain(min(child.plan.shutdown_timeout, left))
            tasks = [g.task for g in child.live if g.task is not None]
            if tasks and left > 0:
                # the drain itself cancels leftovers at its budget; allow it that much extra to unwind
                await self._wait_all(tasks, left + CANCEL_GRACE)
            if child.state is not ChildState.FAILED:
                self._set_state(child, ChildState.STOPPED)
        stuck = [g.task for c in self.children for g in c.live if g.task is not None and not g.task.done()]
        if stuck:
            LOGGER.error(
                "shutdown_timeout (%gs) reached: cancelling %d generation(s): %s",
                sup.shutdown_timeout, len(stuck), ", ".join(t.get_name() for t in stuck),
            )  # fmt: skip
            for task in stuck:
                task.cancel()
            await asyncio.wait(stuck, timeout=CANCEL_GRACE)
        for child in self.children:
            if child.listener is not None:
                await child.listener.wait_closed(CANCEL_GRACE)
        for child in self.children:
            child.flush()
        LOGGER.info("shutdown complete in %.3fs", loop.time() - started)

    async def _wait_all(self, tasks: list[asyncio.Task[None]], timeout: float) -> None:
        """Until every task is done or ``timeout``; a second stop request leaves them CANCEL_GRACE only."""
        if not self._force.done():
            everything = asyncio.ensure_future(asyncio.wait(tasks))
            try:
                await asyncio.wait((everything, self._force), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                everything.cancel()
        if self._force.done():  # every generation cuts its own waits now: they end within moments
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)

    # -- state ----------------------------------------------------------------------------------------------------

    def _release(self, child: Child) -> None:
        """Close the server's listener for good: its port is free, new clients are refused."""
        if child.listener is not None:
            child.listener.close()
            if not self._shutting_down:
                child.listener = None

    def _set_state(self, child: Child, state: ChildState) -> None:
        child.state = state
        self._publish()

    def _publish(self) -> None:
        self._snapshot = TreeSnapshot(
            children=tuple(self._status(c) for c in self.children),
            started=self.ready.done() and not self.ready.cancelled(),
            shutting_down=self._shutting_down,
        )
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    @staticmethod
    def _status(c: Child) -> ChildStatus:
        return ChildStatus(
            name=c.name,
            state=c.state,
            address=c.address or str(Address(c.plan.host, c.plan.port)),
            restart=c.plan.restart,
            started_at=c.started_at,
            generation=c.generation,
            restarts=c.restarts,
            last_error=c.last_error,
            wanted=c.wanted,
        )

    async def changed(self) -> TreeSnapshot:
        """Wait for the next state change and return the new snapshot (for views and tests)."""
        await asyncio.shield(self._changed)
        return self._snapshot

    async def _wait_until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(CONTROL_TIMEOUT):
            while not condition():
                await self.changed()


class _Pending:
    """Stands in for a generation whose socket could not be bound, until its failure is handled."""

    def stop(self, reason: Reason = None) -> None:
        pass


_PENDING: Generation = _Pending()  # type: ignore[assignment]
