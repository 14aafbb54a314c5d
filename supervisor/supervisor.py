"""The coordinator: the one writer of the running tree. It starts generations, reacts to how they end, applies
control requests, and publishes an immutable snapshot after every change.

``Supervisor.serve()`` has three phases: startup (servers in dependency order, each waiting for the ones it
comes ``after``), wait (react to events: generations that end or become ready, backoff timers, control
requests), and the ordered shutdown (shutdown.py). What happens after a generation ends is outcomes.py
(which asks restart.decide()); what a control command does is control.apply(). Every generation runs as a
task of one ``asyncio.TaskGroup``, but the TaskGroup is not the supervisor: a generation never lets an
exception escape, it reports through ``on_end``. Views read only the snapshot and the counters, through tree.TreeView.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from supervisor import control
from supervisor.address import Address
from supervisor.child import PENDING, Child
from supervisor.commands import Command, Result
from supervisor.errors import GaveUp
from supervisor.generation import Generation, Reason
from supervisor.listener import Listener
from supervisor.loopguard import LoopGuard
from supervisor.outcomes import Outcomes
from supervisor.plan import Plan
from supervisor.restart import Backoff, Intensity
from supervisor.shutdown import OrderedShutdown
from supervisor.state import ChildState, ServerStats, TreeSnapshot

LOGGER = logging.getLogger("supervisor")


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
    command: Command
    child: Child
    handled: asyncio.Future[None]  # resolved once the coordinator acted on it


_Event = _Ended | _Ready | _Control | None  # None only wakes the loop (stop request, backoff timer)


class Supervisor:
    def __init__(
        self, plan: Plan, *, clock: Callable[[], float] | None = None, rand: Callable[[], float] = random.random
    ) -> None:
        loop = asyncio.get_running_loop()  # construct the Supervisor inside the loop that will run it
        self.plan = plan
        self.children = [Child(p, Backoff(p.backoff, rand)) for p in plan.servers]
        self._by_name = {c.name: c for c in self.children}
        self._clock = clock
        self._snapshot = TreeSnapshot(tuple(c.status() for c in self.children))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        self._stop = asyncio.Event()
        # done on a second stop request: cuts every wait (drains, lifespan enters and exits, the shutdown)
        self._force: asyncio.Future[None] = loop.create_future()
        # replaced by a fresh future on every publish, so no waiter can miss a change
        self._changed: asyncio.Future[None] = loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()  # every generation's task still running
        self._shutting_down = False
        self._gave_up: str | None = None
        self._wake_at: float | None = None  # the earliest pending backoff wake-up
        self._outcomes = Outcomes(
            self, Intensity(plan.supervisor.max_restarts, plan.supervisor.restart_window, self.now)
        )
        self.stop_reason = ""
        # The readiness handshake: resolves with every bound address once all servers serve.
        self.ready: asyncio.Future[list[Address]] = loop.create_future()
        self.guard = LoopGuard(self._server_at, plan.supervisor.max_loop_lag)

    # -- the read-only interface views use (tree.TreeView) ---------------------------------------------------------

    def snapshot(self) -> TreeSnapshot:
        """Thread-safe: the last published immutable snapshot."""
        return self._snapshot

    async def changed(self) -> TreeSnapshot:
        """Wait for the next published change and return the new snapshot (for views and tests)."""
        await asyncio.shield(self._changed)
        return self._snapshot

    def counters(self) -> Mapping[str, ServerStats]:
        """Each server's live counters (plain ints bumped per connection): read them, never write them."""
        return {c.name: c.stats for c in self.children}

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def submit(self, command: Command, name: str | None = None) -> concurrent.futures.Future[Result]:
        """Thread-safe entry for the console thread: run a control command on the supervisor's loop."""
        if self._loop is None:
            raise RuntimeError("the supervisor is not running")
        return asyncio.run_coroutine_threadsafe(self.control(command, name), self._loop)

    # -- control ---------------------------------------------------------------------------------------------------

    def give_up(self, why: str) -> None:
        """Shut down in order and make serve() raise GaveUp(why). Not a second stop request: during a shutdown
        already under way (a generation's end was still queued) it must not cut the other servers' drains."""
        self._gave_up = self._gave_up or why
        if not self._stop.is_set():
            self.request_stop("gave up")

    def request_stop(self, reason: str) -> None:
        """Begin the ordered shutdown; a second request cuts every wait (force)."""
        if self._stop.is_set():
            if not self._force.done():
                LOGGER.warning("second stop request (%s): skipping the drain wait", reason)
                self._force.set_result(None)
            return
        self.stop_reason = reason
        self._stop.set()
        self._post(None)

    async def control(self, command: Command | str, name: str | None = None) -> Result:
        return await control.request(self, Command(command), name)

    # seams for control.request / control.apply and the shutdown

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def child(self, name: str) -> Child | None:
        return self._by_name.get(name)

    def post_control(self, command: Command, child: Child) -> asyncio.Future[None]:
        handled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._post(_Control(command, child, handled))
        return handled

    def stop_generation(self, child: Child) -> None:
        gen, child.gen = child.gen, None
        if gen is not None:
            gen.stop(None)
            gen.start_drain(child.plan.shutdown_timeout, restart=True)

    def release(self, child: Child) -> None:
        """Close the server's listener for good: its port is free, new clients are refused."""
        if child.listener is not None:
            child.listener.close()
            child.closing = child.listener.closed
            if not self._shutting_down:
                child.listener = None

    def set_state(self, child: Child, state: ChildState) -> None:
        child.state = state
        self._publish()

    # -- serve: startup -> wait -> shutdown ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until stopped. Raises GaveUp after an ordered shutdown if a server could not be kept running."""
        self._loop = asyncio.get_running_loop()
        shutdown = OrderedShutdown(self.children, self.plan.supervisor, self._force, self.release, self.set_state)
        try:
            with self.guard.installed(self._loop):
                try:
                    await self._run()
                finally:
                    self._shutting_down = True
                    self._publish()  # views see the shutdown at once, whatever state the servers are in
                    # Bounded: what is still running after it (a lifespan that ignores cancellation) is left to
                    # the CLI's exit, which names it. A TaskGroup here would wait for such a task for ever.
                    await shutdown.run(self.stop_reason or "exit")
        finally:
            for child in self.children:
                self.release(child)
            if not self.ready.done():
                self.ready.cancel()
        if self._gave_up:
            raise GaveUp(self._gave_up)

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._reconcile()
            if not self.ready.done() and all(c.state is ChildState.RUNNING for c in self.children if c.wanted):
                addresses = [c.listener.address for c in self.children if c.listener and c.wanted]
                LOGGER.info("supervisor ready: %d server(s) serving", len(addresses))
                self.ready.set_result(addresses)
                self._publish()
            event = await self._events.get()
            if isinstance(event, _Ended):
                if not self._shutting_down:  # the shutdown drains every live generation itself, in order
                    self._outcomes.ended(event.child, event.gen, event.reason)
            elif isinstance(event, _Ready):
                self._ready(event.child, event.gen)
            elif isinstance(event, _Control):
                control.apply(self, event.command, event.child)
                if not event.handled.done():
                    event.handled.set_result(None)

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
            waiting = [self._by_name[d] for d in child.plan.after if self._by_name[d].state is not ChildState.RUNNING]
            if not waiting:
                await self._start(child)
            elif dead := [d for d in waiting if not d.wanted and d.state is ChildState.FAILED]:
                self._outcomes.orphaned(child, dead[0])

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
        if child.listener is None:
            try:
                listener = Listener.bind(child.plan, child.stats)
            except OSError as exc:
                self._post(_Ended(child, None, exc))
                child.gen = PENDING  # keeps reconcile from retrying before the failure is handled
                self.set_state(child, ChildState.STARTING)
                return
            child.listener = listener
            await listener.start()
        child.generation += 1
        gen = Generation(child.plan, child.generation, child.listener, child.stats, self._force, self._on_end)
        child.gen = gen
        child.live.add(gen)
        self.set_state(child, ChildState.STARTING)  # published with the new generation's number
        gen.task = asyncio.get_running_loop().create_task(gen.run(), name=f"server:{child.name}")
        self._tasks.add(gen.task)
        gen.task.add_done_callback(lambda _t: child.live.discard(gen))
        gen.task.add_done_callback(self._task_done)
        gen.ready.add_done_callback(lambda _f: self._post(_Ready(child, gen)))

    def _ready(self, child: Child, gen: Generation) -> None:
        if child.gen is not gen or gen.ready.cancelled() or gen.ready.exception() is not None:
            return  # failed or replaced before it was ready: its _Ended event tells the story
        child.address = str(gen.ready.result())
        child.started_at = self.now()
        child.served = True
        child.start_failures = 0
        self.set_state(child, ChildState.RUNNING)
        child.flush()
        LOGGER.info("server %s listening on %s (generation %d)", child.name, child.address, gen.number)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # a generation reports, never raises
            LOGGER.critical("internal error: %s raised %r; shutting down", task.get_name(), exc, exc_info=exc)
            self.give_up(f"internal error in {task.get_name()}: {exc!r}")

    # -- how generations end ---------------------------------------------------------------------------------------

    def _post(self, event: _Event) -> None:
        self._events.put_nowait(event)

    def _on_end(self, gen: Generation, reason: Reason) -> None:
        self._post(_Ended(self._by_name[gen.plan.name], gen, reason))

    # -- publishing ------------------------------------------------------------------------------------------------

    def _publish(self) -> None:
        self._snapshot = TreeSnapshot(
            children=tuple(c.status() for c in self.children),
            started=self.ready.done() and not self.ready.cancelled(),
            shutting_down=self._shutting_down,
        )
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    def _server_at(self, fd: int) -> tuple[str, ServerStats] | None:
        """The server listening on ``fd`` (for the loop guard's accept errors)."""
        for c in self.children:
            if c.listener is not None and c.listener.fileno == fd:
                return c.name, c.stats
        return None
