"""The coordinator: the one writer of the running tree. Its loop reacts to events (generations that end or become
ready, backoff timers, control requests, reloads), and it publishes an immutable snapshot of every change
(snapshots.py: coalesced per loop iteration); agenda.py says which servers an event touched.

``serve()``: startup and wait (starter.py starts what is due, in dependency order), then the ordered shutdown
(shutdown.py). How a generation's end is handled is outcomes.py; a control command, control.apply(); a reload,
reload.py. Each of those changes the tree through the small public seams below. Views read only the snapshot
and the counters, through tree.TreeView.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Collection, Mapping

from supervisor import control, events, reload
from supervisor.address import Address
from supervisor.child import Child
from supervisor.commands import Command, Result
from supervisor.errors import GaveUp
from supervisor.listener import Listener
from supervisor.loopguard import LoopGuard, ServerFinder
from supervisor.outcomes import Outcomes
from supervisor.plan import Plan, ServerPlan
from supervisor.reload import Reload
from supervisor.restart import Backoff, Intensity
from supervisor.shutdown import OrderedShutdown
from supervisor.snapshots import Snapshots
from supervisor.spec import SupervisorSpec
from supervisor.starter import Starter
from supervisor.state import ChildState, ChildStatus, ConfigStatus, ServerStats, TreeSnapshot

LOGGER = logging.getLogger("supervisor")


class Supervisor:
    def __init__(
        self,
        plan: Plan,
        *,
        clock: Callable[[], float] | None = None,
        rand: Callable[[], float] = random.random,
        stopped: Collection[str] = (),
    ) -> None:
        """``stopped``: servers that start stopped, as if by ``stop NAME`` (a worker replacing one where they were)."""
        loop = asyncio.get_running_loop()  # construct the Supervisor inside the loop that will run it
        self.plan = plan
        self._rand = rand
        self.children = [Child(p, Backoff(p.backoff, rand), wanted=p.name not in stopped) for p in plan.servers]
        self._by_name = {c.name: c for c in self.children}
        self._retired: list[Child] = []  # removed by a reload, still draining
        self._clock = clock
        self._config = ConfigStatus(plan.source, plan.digest, time.time(), last_success_at=time.time())
        self._reload: Reload | None = None  # the one reload under way
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: asyncio.Queue[events.Event] = asyncio.Queue()
        self._stop = asyncio.Event()
        # done on a second stop request: cuts every wait (drains, lifespan enters and exits, the shutdown)
        self._force: asyncio.Future[None] = loop.create_future()
        self._shutting_down = False
        self._gave_up: str | None = None
        self._intensity = Intensity(plan.supervisor.max_restarts, plan.supervisor.restart_window, self.now)
        self._outcomes = Outcomes(self, self._intensity)
        self._starter = Starter(self, self._outcomes, self._force)
        self.spawn, self.serving = self._starter.spawn, self._starter.serving  # seams for the reload
        self.stop_reason = ""
        # The readiness handshake: resolves with every bound address once all servers serve.
        self.ready: asyncio.Future[list[Address]] = loop.create_future()
        self._snapshots = Snapshots(self.children, self._snapshot_of)
        self.guard = LoopGuard(ServerFinder(self.children).server_at, plan.supervisor.max_loop_lag)

    # -- the read-only interface views use (tree.TreeView) ---------------------------------------------------------

    def snapshot(self) -> TreeSnapshot:
        """Thread-safe: an immutable snapshot (on the loop, of every change so far; elsewhere, the last published)."""
        return self._snapshots.current()

    async def changed(self) -> TreeSnapshot:
        """Wait for the next published change and return the new snapshot (for views and tests)."""
        await self._snapshots.publisher.changed()
        return self._snapshots.current()

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
        self.post(None)

    async def control(self, command: Command | str, name: str | None = None) -> Result:
        return await control.request(self, Command(command), name)

    async def reload(self, trigger: str = "reload") -> Result:
        """Re-read the config file and apply what changed (reload.py); one reload at a time."""
        return await reload.run(self, trigger)

    # seams for control, outcomes, the starter and the shutdown

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def under_way(self) -> Reload | None:
        return self._reload

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def child(self, name: str) -> Child | None:
        return self._by_name.get(name)

    def post_control(self, command: Command, child: Child) -> asyncio.Future[None]:
        handled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.post(events.Control(command, child, handled))
        return handled

    def post(self, event: events.Event) -> None:
        self._events.put_nowait(event)

    def gone(self, child: Child) -> None:
        """The last generation of ``child`` ended: a removed server is done draining."""
        if child in self._retired and not self._shutting_down:
            self._retired.remove(child)

    def stop_generation(self, child: Child, *, restart: bool = True) -> None:
        child.stop_serving(restart=restart)

    def release(self, child: Child) -> None:
        child.release(final=self._shutting_down)

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
        self._starter.agenda.everything()
        self._snapshots.publish_now()

    def retune(self, spec: SupervisorSpec) -> None:
        """A reload's supervisor: section, from now on (the restart history is kept)."""
        self._intensity.max_restarts, self._intensity.window = spec.max_restarts, spec.restart_window
        self.guard.max_lag = spec.max_loop_lag

    def begin(self, under_way: Reload) -> None:
        self._reload, self._config = under_way, dataclasses.replace(self._config, reloading=True)
        self._snapshots.publish_now()

    def reloaded(self, status: ConfigStatus) -> None:
        self._reload, self._config = None, status
        self._starter.agenda.everything()  # the servers it changed may have a new `after`
        self._snapshots.publish_now()

    def set_state(self, child: Child, state: ChildState) -> None:
        child.state = state
        self._touch(child)

    def _touch(self, child: Child) -> None:  # the starter looks at it next; the snapshot shows it (coalesced)
        self._starter.agenda.touch(child)
        self._snapshots.touch(child)

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
                    self._snapshots.publish_now()  # views see the shutdown at once, whatever state the servers are in
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
            await self._starter.reconcile()
            if self._reload is not None and self._reload.applied:
                self._reload.progress()  # settles what the reconcile started for it; finishes it once none is left
            if not self.ready.done() and self._starter.agenda.all_serving():
                addresses = [c.listener.address for c in self.children if c.listener and c.wanted]
                LOGGER.info("supervisor ready: %d server(s) serving", len(addresses))
                self.ready.set_result(addresses)
                self._snapshots.publish_now()
            event = await self._events.get()
            under_way = self._reload
            if isinstance(event, events.Ended | events.Ready | events.Control):
                self._touch(event.child)  # whatever it changed of the child, seen without a state change too
            if isinstance(event, events.Ended):
                if event.gen is not None and event.gen is event.child.next and under_way is not None:
                    under_way.rollover.failed_to_start(event.child, event.gen, event.reason)
                elif not self._shutting_down and event.child not in self._retired:  # the shutdown drains them
                    self._outcomes.ended(event.child, event.gen, event.reason)
            elif isinstance(event, events.Ready):
                if event.gen is event.child.next and under_way is not None:
                    under_way.rollover.ready(event.child, event.gen)
                else:
                    self._starter.ready(event.child, event.gen)
            elif isinstance(event, events.Control):
                control.apply(self, event.command, event.child)
                if not event.handled.done():
                    event.handled.set_result(None)
            elif isinstance(event, events.Reload):
                event.reload.apply()

    def _snapshot_of(self, children: tuple[ChildStatus, ...]) -> TreeSnapshot:
        started = self.ready.done() and not self.ready.cancelled()
        return TreeSnapshot(children, started, self._shutting_down, self._config)
