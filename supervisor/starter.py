"""Starting servers: which wanted servers are due (backoff over, ``after`` servers running), binding a server's
kept socket on its first start, and running each generation as a task whose readiness and end come back to the
coordinator as events. Runs on the coordinator's loop and changes the tree only through its seams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from supervisor import events
from supervisor.agenda import Agenda
from supervisor.child import PENDING, Child
from supervisor.generation import Generation, Reason
from supervisor.listener import Listener
from supervisor.plan import ServerPlan
from supervisor.state import ChildState

if TYPE_CHECKING:
    from supervisor.outcomes import Outcomes
    from supervisor.reload import Reload

LOGGER = logging.getLogger("supervisor")


class Coordinator(Protocol):
    @property
    def children(self) -> Sequence[Child]: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def under_way(self) -> Reload | None: ...

    def child(self, name: str) -> Child | None: ...

    def now(self) -> float: ...

    def post(self, event: events.Event) -> None: ...

    def set_state(self, child: Child, state: ChildState) -> None: ...

    def give_up(self, why: str) -> None: ...

    def gone(self, child: Child) -> None: ...


class Starter:
    def __init__(self, tree: Coordinator, outcomes: Outcomes, force: asyncio.Future[None]) -> None:
        self._tree = tree
        self._outcomes = outcomes
        self._force = force  # handed to every generation: a second stop request cuts its waits
        self._tasks: set[asyncio.Task[None]] = set()  # every generation's task still running
        self._wake_at: float | None = None  # the earliest pending backoff wake-up
        self.agenda = Agenda(tree.children)  # which servers to look at: those whose state changed, or are due

    async def reconcile(self) -> None:
        """Start every wanted server that is down, due, and whose ``after`` servers are running: of the servers
        the agenda names (what changed since the last reconcile), in start order.

        Starts don't wait for each other here: readiness comes back as an events.Ready, so one slow
        lifespan never holds up restarts, control requests or the shutdown of the others.
        """
        tree = self._tree
        while not tree.stopping:
            reload = tree.under_way
            if reload is not None:
                self.agenda.everything()  # a reload changes plans and `after`: look at the whole tree, as it goes
            due = [c for c in self.agenda.take(tree.now()) if self._due(c, reload)]
            if (wake := self.agenda.next_wake()) is not None:
                # A timer may fire a hair early by loop.time() (uvloop rounds to milliseconds):
                # always leave a wake-up behind for a server that is not due yet.
                self._wake_in(wake - tree.now())
            if not due:
                return
            await self._start(due)

    def _due(self, child: Child, reload: Reload | None) -> bool:
        tree = self._tree
        if child.pending is not None and reload is not None:
            reload.rollover.due(child)
        if not child.wanted or child.gen is not None or child.next is not None:
            return False
        if child.not_before - tree.now() > 0:
            self.agenda.wake(child, child.not_before)
            return False
        # a dependency a reload is changing counts as started once its new generation took over
        deps = [d for d in map(tree.child, child.plan.after) if d is not None]
        waiting = [
            d for d in deps if (d.state is not ChildState.RUNNING or d.pending is not None) and not d.stopped_unstarted
        ]
        if not waiting:
            return True
        if dead := [d for d in waiting if not d.wanted and d.state is ChildState.FAILED]:
            self._outcomes.orphaned(child, dead[0])
        return False

    def _wake_in(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + max(seconds, 0.001)
        if self._wake_at is None or due < self._wake_at:
            self._wake_at = due
            loop.call_at(due, self._woken, due)

    def _woken(self, due: float) -> None:
        if self._wake_at == due:
            self._wake_at = None
        self._tree.post(None)

    async def _start(self, children: list[Child]) -> None:
        """Bind the sockets of those starting for the first time, start accepting on all of them in one step
        (``create_server`` skips a loop iteration each: one at a time, 1,000 first starts took 1,000 iterations),
        then start a generation of each."""
        fresh: list[Listener] = []
        ready: list[Child] = []
        for child in children:
            if child.listener is None:
                try:
                    child.listener = Listener.bind(child.plan, child.stats)
                except OSError as exc:
                    self._tree.post(events.Ended(child, None, exc))
                    child.gen = PENDING  # keeps reconcile from retrying before the failure is handled
                    self._tree.set_state(child, ChildState.STARTING)
                    continue
                fresh.append(child.listener)
            ready.append(child)
        if fresh:
            await asyncio.gather(*(listener.start() for listener in fresh))
        for child in ready:
            assert child.listener is not None
            child.gen = self.spawn(child, child.plan, child.listener)
            self._tree.set_state(child, ChildState.STARTING)  # published with the new generation's number

    def spawn(self, child: Child, plan: ServerPlan, listener: Listener) -> Generation:
        """Start a generation of ``child`` on ``listener``; its readiness and its end come back as events."""
        post = self._tree.post

        def ended(gen: Generation, reason: Reason) -> None:
            post(events.Ended(child, gen, reason))

        def gone(_task: asyncio.Task[None]) -> None:
            child.live.discard(gen)
            if not child.live:
                self._tree.gone(child)

        child.generation += 1
        gen = Generation(plan, child.generation, listener, child.stats, self._force, ended)
        child.live.add(gen)
        gen.task = asyncio.get_running_loop().create_task(gen.run(), name=f"server:{child.name}")
        self._tasks.add(gen.task)
        gen.task.add_done_callback(gone)
        gen.task.add_done_callback(self._task_done)
        gen.ready.add_done_callback(lambda _f: post(events.Ready(child, gen)))
        return gen

    def ready(self, child: Child, gen: Generation) -> None:
        if child.gen is not gen or gen.ready.cancelled() or gen.ready.exception() is not None:
            return  # failed or replaced before it was ready: its events.Ended tells the story
        self.serving(child, gen)
        child.flush()
        LOGGER.info("server %s listening on %s (generation %d)", child.name, child.address, gen.number)

    def serving(self, child: Child, gen: Generation) -> None:
        """``gen`` became ready and is ``child``'s serving generation now."""
        child.address = str(gen.ready.result())
        child.started_at = self._tree.now()
        child.served = True
        child.start_failures = 0
        self._tree.set_state(child, ChildState.RUNNING)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # a generation reports, never raises
            LOGGER.critical("internal error: %s raised %r; shutting down", task.get_name(), exc, exc_info=exc)
            self._tree.give_up(f"internal error in {task.get_name()}: {exc!r}")
