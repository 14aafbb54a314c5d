"""The parent's view of its worker processes (``supervisor.workers: N``), as the one read-only interface every
view reads (tree.TreeView): so /metrics, /readyz, the console, ``ctl`` and sd_notify work unchanged on it.

A server's status is merged from the workers that serve: running if it runs in any of them, else the state an
operator must hear about first (:data:`_ORDER`). Its counters are summed over the live workers plus the last report
of every dead one, so a counter never goes backwards when a worker dies (Prometheus' ``rate()`` would read the drop
as a reset); its status' restart count is those same restart counters' sum (:meth:`Fleet._restarts_of`). The
parent's coordinator (workers.py) is the only writer: it changes slots and calls :meth:`Fleet.publish`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from supervisor import wire
from supervisor.address import Address
from supervisor.commands import Command, Result, combine
from supervisor.loopguard import LoopGuard
from supervisor.plan import Plan, ServerPlan
from supervisor.state import (
    ChildState,
    ChildStatus,
    ConfigStatus,
    Publisher,
    ServerStats,
    TreeSnapshot,
    WorkerState,
    WorkerStatus,
)
from supervisor.worker_process import WorkerProcess


@dataclass(slots=True)
class Slot:
    """One of the N places a worker process serves in; a dead worker's replacement takes the same slot."""

    number: int
    process: WorkerProcess | None = None
    state: WorkerState = WorkerState.STARTING
    restarts: int = 0
    last_exit: str = ""
    started_at: float | None = None  # loop time its current process became ready

    def swap(self, process: WorkerProcess) -> WorkerProcess | None:
        """``process`` serves in this slot from now on; the one it replaces (the keeper watches the new one)."""
        old, self.process = self.process, process
        return old

    def status(self) -> WorkerStatus:
        pid = self.process.pid if self.process else 0
        return WorkerStatus(self.number, pid, self.state, self.started_at, self.restarts, self.last_exit)


class Fleet:
    def __init__(self, plan: Plan, addresses: Mapping[str, Address], handle: Callable[[Command, str | None],
                 Coroutine[Any, Any, Result]]) -> None:  # fmt: skip
        loop = asyncio.get_running_loop()
        self.plan = plan
        self.addresses = dict(addresses)  # server -> its bound address (the parent's sockets)
        self.slots = [Slot(n) for n in range(1, plan.supervisor.workers + 1)]
        self.ready: asyncio.Future[list[Address]] = loop.create_future()
        self.guard = FleetLag(self, LoopGuard(lambda fd: None, plan.supervisor.max_loop_lag))
        self.config = ConfigStatus(plan.source, plan.digest, time.time(), last_success_at=time.time())
        self.shutting_down = False
        self._dead: dict[str, ServerStats] = {}  # each server's totals from the workers that are gone
        self._restarts: dict[int, int] = {}  # a removed slot's restarts, by number: for the parent's life
        self._counted: list[WorkerProcess] = []  # whose last report counts, until it is buried
        self._handle = handle
        self._loop = loop
        self._published = Publisher(self._build())

    # -- tree.TreeView ---------------------------------------------------------------------------------------------

    def snapshot(self) -> TreeSnapshot:
        return self._published.snapshot()

    async def changed(self) -> TreeSnapshot:
        return await self._published.changed()

    def counters(self) -> Mapping[str, ServerStats]:
        totals = {name: dataclasses.replace(self._dead.get(name) or ServerStats()) for name in self.addresses}
        for name, stats in totals.items():
            stats.restarts, stats.client_errors = stats.restarts.copy(), stats.client_errors.copy()
            stats.duration_counts = list(stats.duration_counts)
            for process in self._counted:
                if (live := process.stats.get(name)) is not None:
                    wire.add_stats(stats, live)
        return totals

    def _restarts_of(self, name: str) -> list[Counter[str]]:
        """``name``'s restart counts as reported, for the status' restarts column: the buried workers' totals and
        every counted worker's last report, the same sum :meth:`counters` gives /metrics (tests/test_fleet.py holds
        them equal), so neither goes backwards when a worker dies (its count moves from its report to the dead)."""
        dead = self._dead.get(name)
        counts = [dead.restarts] if dead is not None else []
        counts += [live.restarts for process in self._counted if (live := process.stats.get(name)) is not None]
        return counts

    def now(self) -> float:
        return self._loop.time()

    def submit(self, command: Command, name: str | None = None) -> concurrent.futures.Future[Result]:
        return asyncio.run_coroutine_threadsafe(self._handle(command, name), self._loop)

    # -- for the parent's coordinator --------------------------------------------------------------------------------

    async def steps(self, command: Command, name: str) -> list[tuple[int, Result]]:
        """Run a server command (restart, stop, start NAME) in every serving worker: (worker number, its answer) of
        each (:func:`summed` makes them one). ``restart``: one worker after the other, so the server never stops in
        every worker at once; ``stop`` and ``start`` in every worker at once (their end state is the same
        everywhere). commands.answer_timeout is how long the console waits for it."""
        serving = [
            (s.number, s.process) for s in self.slots if s.process is not None and s.state is WorkerState.RUNNING
        ]
        if command is Command.RESTART:
            steps = [await process.command(command, name) for _, process in serving]
        else:
            steps = list(await asyncio.gather(*(process.command(command, name) for _, process in serving)))
        return [(n, r) for (n, _), r in zip(serving, steps, strict=True)]

    def resize(self, wanted: int) -> tuple[list[Slot], list[Slot]]:
        """``wanted`` slots from now on (a reload changed ``workers``): the slots added and the ones removed. A slot
        number keeps its restart count for the parent's life: a reload that shrinks the workers and a later one
        that grows them again must not reset ``supervisor_worker_restarts_total`` (Prometheus reads a drop as a
        counter reset)."""
        added = []
        while len(self.slots) < wanted:
            number = len(self.slots) + 1
            added.append(Slot(number, restarts=self._restarts.pop(number, 0)))
            self.slots.append(added[-1])
        removed = self.slots[wanted:]
        del self.slots[wanted:]
        for slot in removed:
            self._restarts[slot.number] = slot.restarts
        return added, removed

    def processes(self) -> list[WorkerProcess]:
        """Every live worker process: the slots', the retiring ones', and one a reload is starting."""
        return [p for p in self._counted if not p.exited.done()]

    def count(self, process: WorkerProcess) -> None:
        """Count ``process``'s reports from now on, until :meth:`bury`."""
        self._counted.append(process)

    def bury(self, process: WorkerProcess) -> None:
        """``process`` ended: its last report joins the dead totals (once). Until this runs its last report still
        counts as a live one, so a scrape in between never sees a counter drop."""
        if process in self._counted:
            self._counted.remove(process)
            for name, stats in process.stats.items():
                wire.add_stats(self._dead.setdefault(name, ServerStats()), stats, gauges=False)

    def publish(self, _: object = None) -> None:
        self._published.publish(self._build())

    def _build(self) -> TreeSnapshot:
        serving = [s.process for s in self.slots if s.process is not None and s.state is WorkerState.RUNNING]
        per_server: dict[str, list[ChildStatus]] = {}
        for process in serving:
            for c in process.children:
                per_server.setdefault(c.name, []).append(c)
        children = tuple(
            self._merged(p, per_server.get(p.name, []), sum(c.total() for c in self._restarts_of(p.name)))
            for p in self.plan.servers
        )
        started = self.ready.done() and not self.ready.cancelled()
        workers = tuple(s.status() for s in self.slots)
        return TreeSnapshot(children, started, self.shutting_down, self.config, workers)

    def _merged(self, plan: ServerPlan, mine: list[ChildStatus], restarts: int) -> ChildStatus:
        """Running if it runs in any serving worker (those accept its connections; a worker where it is down has
        closed its copy of the socket); else the state an operator must hear about first. ``restarts``: over the
        parent's life, dead workers' included (:meth:`_restarts_of`), not the serving workers' sum."""
        address = str(self.addresses.get(plan.name, ""))
        if not mine:
            return ChildStatus(plan.name, ChildState.STARTING, address, plan.restart, None, 0, restarts, "")
        states = {c.state for c in mine}
        state = ChildState.RUNNING if ChildState.RUNNING in states else min(states, key=_rank)
        started = [c.started_at for c in mine if c.started_at is not None]
        errors = [c.last_error for c in mine if c.last_error]
        return ChildStatus(
            plan.name, state, address, plan.restart, min(started) if started else None,
            max(c.generation for c in mine), restarts, errors[-1] if errors else "",
            wanted=any(c.wanted for c in mine),
        )  # fmt: skip


_ORDER = (ChildState.FAILED, ChildState.STOPPED, ChildState.BACKOFF, ChildState.STOPPING, ChildState.STARTING)


def _rank(state: ChildState) -> int:
    """The state a server shows when its workers disagree: the one an operator must hear about first."""
    return _ORDER.index(state) if state in _ORDER else len(_ORDER)


class FleetLag:
    """The loop lag views report: the worst of the parent's loop and every worker's."""

    def __init__(self, fleet: Fleet, own: LoopGuard) -> None:
        self.own = own
        self._fleet = fleet
        self.max_lag = own.max_lag

    def worst_lag(self) -> float:
        return max([self.own.worst_lag(), *(p.lag for p in self._fleet.processes())])

    def blocked(self) -> bool:
        return self.own.blocked() or any(p.blocked for p in self._fleet.processes())


def summed(steps: list[tuple[int, Result]]) -> Result:
    """One answer for a command every serving worker ran: its text once if they all said the same."""
    if not steps:
        return Result(False, "no worker is running (see status)")
    if all(r.ok for _, r in steps) and len({r.text for _, r in steps}) == 1:
        return Result(True, f"{steps[0][1].text} in {len(steps)} worker(s)")
    return combine([Result(r.ok, f"worker {n}: {r.text}") for n, r in steps])
