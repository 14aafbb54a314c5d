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
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping

from supervisor import control, events
from supervisor.address import Address
from supervisor.child import PENDING, Child
from supervisor.commands import Command, Result
from supervisor.errors import GaveUp
from supervisor.generation import Generation, Reason
from supervisor.listener import Listener
from supervisor.loopguard import LoopGuard
from supervisor.outcomes import Outcomes
from supervisor.plan import Plan, ServerPlan
from supervisor.reload import Reload
from supervisor.restart import Backoff, Intensity
from supervisor.shutdown import OrderedShutdown
from supervisor.spec import SupervisorSpec
from supervisor.state import ChildState, ConfigStatus, ServerStats, TreeSnapshot

LOGGER = logging.getLogger("supervisor")


class Supervisor:
    def __init__(
        self, plan: Plan, *, clock: Callable[[], float] | None = None, rand: Callable[[], float] = random.random
    ) -> None:
        loop = asyncio.get_running_loop()  # construct the Supervisor inside the loop that will run it
        self.plan = plan
        self._rand = rand
        self.children = [Child(p, Backoff(p.backoff, rand)) for p in plan.servers]
        self._by_name = {c.name: c for c in self.children}
        self._retired: list[Child] = []  # removed by a reload, still draining
        self._clock = clock
        self._config = ConfigStatus(plan.source, plan.digest, time.time(), last_success_at=time.time())
        self._reload: Reload | None = None  # the one reload under way
        self._snapshot = TreeSnapshot(tuple(c.status() for c in self.children))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[events.Event] = asyncio.Queue()
        self._stop = asyncio.Event()
        # done on a second stop request: cuts every wait (drains, lifespan enters and exits, the shutdown)
        self._force: asyncio.Future[None] = loop.create_future()
        # replaced by a fresh future on every publish, so no waiter can miss a change
        self._changed: asyncio.Future[None] = loop.create_future()
        self._tasks: set[asyncio.Task[None]] = set()  # every generation's task still running
        self._shutting_down = False
        self._gave_up: str | None = None
        self._wake_at: float | None = None  # the earliest pending backoff wake-up
        self._intensity = Intensity(plan.supervisor.max_restarts, plan.supervisor.restart_window, self.now)
        self._outcomes = Outcomes(self, self._intensity)
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

    async def reload(self, trigger: str = "reload") -> Result:
        """Re-read the config file and apply what changed (reload.py); one reload at a time."""
        refusal = ""
        if self._stop.is_set():
            refusal = "the supervisor is shutting down"
        elif not self.ready.done():
            refusal = "the supervisor is still starting; reload once it is ready"
        elif (under_way := self._reload) is not None:
            since = time.monotonic() - under_way.started
            refusal = f"a reload ({under_way.trigger}) is under way since {since:.1f}s; try again once it is done"
        if refusal:
            LOGGER.warning("reload (%s) refused: %s", trigger, refusal)
            return Result(False, f"not reloading: {refusal}")
        LOGGER.info("reload (%s): reading %s", trigger, self.plan.source)
        self._reload = reload = Reload(self, trigger, self._config)
        self._config = dataclasses.replace(self._config, reloading=True)
        self._publish()
        if (early := await reload.prepare()) is not None:
            return early
        if self._stop.is_set():  # a stop came while the new sockets were bound
            reload.interrupt()
        else:
            self._post(events.Reload(reload))
        return await asyncio.shield(reload.done)

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
        self._post(events.Control(command, child, handled))
        return handled

    def stop_generation(self, child: Child, *, restart: bool = True) -> None:
        gen, child.gen = child.gen, None
        if gen is not None:
            gen.stop(None)
            gen.start_drain(child.plan.shutdown_timeout, restart=restart)

    def release(self, child: Child) -> None:
        """Close the server's listener for good: its port is free, new clients are refused."""
        if child.next is not None:  # a reload's warm generation: it ends, and the reload reports it
            child.next.stop(None)
        if child.listener is not None:
            child.listener.close()
            child.closing = child.listener.closed
            if not self._shutting_down:
                child.listener = None
        if self._shutting_down and child.pending_listener is not None:
            child.pending_listener.close()

    # seams for the reload (reload.py)

    def make_child(self, plan: ServerPlan, listener: Listener) -> Child:
        child = Child(plan, Backoff(plan.backoff, self._rand), listener.stats, ChildState.STARTING, listener=listener)
        self._by_name[child.name] = child
        return child

    def adopt(self, plan: Plan, children: list[Child], retired: list[Child]) -> None:
        """The reload's new tree: ``children`` in the new start order; ``retired`` drain until their tasks end."""
        self.plan = plan
        self.children[:] = children  # in place: the ordered shutdown reads this list
        self._retired.extend(c for c in retired if c.live)
        for child in retired:
            del self._by_name[child.name]
        self._publish()

    def retune(self, spec: SupervisorSpec) -> None:
        """A reload's supervisor: section, from now on (the restart history is kept)."""
        self._intensity.max_restarts, self._intensity.window = spec.max_restarts, spec.restart_window
        self.guard.max_lag = spec.max_loop_lag

    def reloaded(self, status: ConfigStatus) -> None:
        self._reload, self._config = None, status
        self._publish()

    def set_state(self, child: Child, state: ChildState) -> None:
        child.state = state
        self._publish()

    # -- serve: startup -> wait -> shutdown ----------------------------------------------------------------------

    async def serve(self) -> None:
        """Run until stopped. Raises GaveUp after an ordered shutdown if a server could not be kept running."""
        self._loop = asyncio.get_running_loop()
        try:
            with self.guard.installed(self._loop):
                try:
                    await self._run()
                finally:
                    self._shutting_down = True
                    if self._reload is not None:
                        self._reload.interrupt()
                    self._publish()  # views see the shutdown at once, whatever state the servers are in
                    everyone = [*self.children, *self._retired]  # the retired drain first (reverse order)
                    shutdown = OrderedShutdown(
                        everyone, self.plan.supervisor, self._force, self.release, self.set_state
                    )
                    # Bounded: what is still running after it (a lifespan that ignores cancellation) is left to
                    # the CLI's exit, which names it. A TaskGroup here would wait for such a task for ever.
                    await shutdown.run(self.stop_reason or "exit")
        finally:
            for child in [*self.children, *self._retired]:
                self.release(child)
            if not self.ready.done():
                self.ready.cancel()
        if self._gave_up:
            raise GaveUp(self._gave_up)

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self._reconcile()
            if self._reload is not None and self._reload.applied:
                self._reload.progress()  # settles what the reconcile started for it; finishes it once none is left
            if not self.ready.done() and all(c.state is ChildState.RUNNING for c in self.children if c.wanted):
                addresses = [c.listener.address for c in self.children if c.listener and c.wanted]
                LOGGER.info("supervisor ready: %d server(s) serving", len(addresses))
                self.ready.set_result(addresses)
                self._publish()
            event = await self._events.get()
            reload = self._reload
            if isinstance(event, events.Ended):
                if event.gen is not None and event.gen is event.child.next and reload is not None:
                    reload.failed(event.child, event.gen, event.reason)
                elif not self._shutting_down and event.child not in self._retired:  # the shutdown drains them
                    self._outcomes.ended(event.child, event.gen, event.reason)
            elif isinstance(event, events.Ready):
                if event.gen is event.child.next and reload is not None:
                    reload.ready(event.child, event.gen)
                else:
                    self._ready(event.child, event.gen)
            elif isinstance(event, events.Control):
                control.apply(self, event.command, event.child)
                if not event.handled.done():
                    event.handled.set_result(None)
            elif isinstance(event, events.Reload):
                event.reload.apply()

    async def _reconcile(self) -> None:
        """Start every wanted server that is down, due, and whose ``after`` servers are running.

        Starts don't wait for each other here: readiness comes back as an events.Ready, so one slow
        lifespan never holds up restarts, control requests or the shutdown of the others.
        """
        for child in self.children:
            if self._stop.is_set():
                return
            if child.pending is not None and self._reload is not None:
                self._reload.due(child)
            if not child.wanted or child.gen is not None or child.next is not None:
                continue
            if (wait := child.not_before - self.now()) > 0:
                # A timer may fire a hair early by loop.time() (uvloop rounds to milliseconds):
                # always leave a wake-up behind for a server that is not due yet.
                self._wake_in(wait)
                continue
            # a dependency a reload is changing counts as started once its new generation took over
            deps = [self._by_name[d] for d in child.plan.after]
            waiting = [d for d in deps if d.state is not ChildState.RUNNING or d.pending is not None]
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
                self._post(events.Ended(child, None, exc))
                child.gen = PENDING  # keeps reconcile from retrying before the failure is handled
                self.set_state(child, ChildState.STARTING)
                return
            child.listener = listener
            await listener.start()
        child.gen = self.spawn(child, child.plan, child.listener)
        self.set_state(child, ChildState.STARTING)  # published with the new generation's number

    def spawn(self, child: Child, plan: ServerPlan, listener: Listener) -> Generation:
        """Start a generation of ``child`` on ``listener``; its readiness and its end come back as events."""
        child.generation += 1
        gen = Generation(plan, child.generation, listener, child.stats, self._force, self._on_end)
        child.live.add(gen)
        gen.task = asyncio.get_running_loop().create_task(gen.run(), name=f"server:{child.name}")
        self._tasks.add(gen.task)
        gen.task.add_done_callback(lambda _t: self._gone(child, gen))
        gen.task.add_done_callback(self._task_done)
        gen.ready.add_done_callback(lambda _f: self._post(events.Ready(child, gen)))
        return gen

    def _gone(self, child: Child, gen: Generation) -> None:
        child.live.discard(gen)
        if not child.live and child in self._retired and not self._shutting_down:
            self._retired.remove(child)

    def _ready(self, child: Child, gen: Generation) -> None:
        if child.gen is not gen or gen.ready.cancelled() or gen.ready.exception() is not None:
            return  # failed or replaced before it was ready: its events.Ended tells the story
        self.serving(child, gen)
        child.flush()
        LOGGER.info("server %s listening on %s (generation %d)", child.name, child.address, gen.number)

    def serving(self, child: Child, gen: Generation) -> None:
        """``gen`` became ready and is ``child``'s serving generation now."""
        child.address = str(gen.ready.result())
        child.started_at = self.now()
        child.served = True
        child.start_failures = 0
        self.set_state(child, ChildState.RUNNING)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # a generation reports, never raises
            LOGGER.critical("internal error: %s raised %r; shutting down", task.get_name(), exc, exc_info=exc)
            self.give_up(f"internal error in {task.get_name()}: {exc!r}")

    # -- how generations end ---------------------------------------------------------------------------------------

    def _post(self, event: events.Event) -> None:
        self._events.put_nowait(event)

    def _on_end(self, gen: Generation, reason: Reason) -> None:
        child = self._by_name.get(gen.plan.name)
        if child is None or gen not in child.live:  # a removed server's generation
            child = next(c for c in self._retired if gen in c.live)
        self._post(events.Ended(child, gen, reason))

    # -- publishing ------------------------------------------------------------------------------------------------

    def _publish(self) -> None:
        self._snapshot = TreeSnapshot(
            children=tuple(c.status() for c in self.children),
            started=self.ready.done() and not self.ready.cancelled(),
            shutting_down=self._shutting_down,
            config=self._config,
        )
        changed, self._changed = self._changed, asyncio.get_running_loop().create_future()
        changed.set_result(None)

    def _server_at(self, fd: int) -> tuple[str, ServerStats] | None:
        """The server listening on ``fd`` (for the loop guard's accept errors)."""
        for c in self.children:
            if c.listener is not None and c.listener.fileno == fd:
                return c.name, c.stats
        return None
