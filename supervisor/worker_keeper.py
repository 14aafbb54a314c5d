"""Keeping one worker slot serving (``supervisor.workers: N``): start its worker, mark it running once ready,
and replace it with backoff each time it dies -- until too many deaths make the parent give up. A rolling reload
may put a new process in the slot meanwhile: the keeper then watches that one."""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from typing import TYPE_CHECKING

from supervisor import wire
from supervisor.fleet import Fleet, Slot
from supervisor.restart import Backoff
from supervisor.spec import BackoffSpec
from supervisor.state import WorkerState
from supervisor.worker_process import WorkerProcess

if TYPE_CHECKING:
    from supervisor.workers import Parent

LOGGER = logging.getLogger("supervisor")

READY_SLACK = 10.0  # beyond the slowest server's start_timeout: the worker's interpreter start and imports
HANG_FLOOR = 5.0  # seconds: a worker is never taken for hung sooner
HANG_CHECK = 1.0  # how often a ready worker's silence is checked
STALL = 2 * HANG_CHECK  # a longer gap between two checks: the parent's own loop was blocked meanwhile
WORKER_BACKOFF = BackoffSpec()  # between deaths of one slot's workers: 0.1 s doubling up to 5 s, with jitter


async def keep(parent: Parent, slot: Slot) -> None:
    """Keep a worker serving in ``slot``: start one, and replace it (with backoff) each time it dies."""
    backoff = Backoff(WORKER_BACKOFF, random.random)
    loop = asyncio.get_running_loop()
    while not parent.stopping:
        try:
            if slot.process is None or slot.process.exited.done():  # else a reload started one meanwhile
                slot.state, slot.started_at = WorkerState.STARTING, None
                spawned = await parent.spawn(slot.number, parent.config, parent.plan)
                if slot.process is not None and not slot.process.exited.done():  # a reload's, ready meanwhile
                    parent.retire(spawned)
                else:
                    slot.swap(spawned)
        except OSError as exc:  # fork failed (out of memory, process limit)
            slot.last_exit = f"could not start: {exc}"
            if parent.stopped():
                return
        else:
            parent.fleet.publish()
            await _serve(parent, slot)
            if parent.stopped():
                return
        uptime = loop.time() - slot.started_at if slot.started_at is not None else 0.0
        LOGGER.warning("worker %d %s", slot.number, slot.last_exit)
        if not parent.record_death():
            why = f"worker processes died more than {parent.plan.supervisor.max_restarts} times in "
            parent.give_up(why + f"{parent.plan.supervisor.restart_window:g}s (last: worker {slot.number}, "
                         f"{slot.last_exit})")  # fmt: skip
            return
        delay = backoff.next_delay(uptime)
        LOGGER.info("worker %d: replacing it in %.2fs", slot.number, delay)
        slot.state = WorkerState.BACKOFF
        parent.fleet.publish()
        await parent.wait_stop(delay)
        slot.restarts += 1


async def _serve(parent: Parent, slot: Slot) -> None:
    """Wait for ``slot``'s worker to be ready, then for its end; a reload may swap the process meanwhile."""
    fleet = parent.fleet
    while (process := slot.process) is not None:
        if not process.ready.done():
            # a worker whose loop blocks while it starts never times its own start out
            if not await wire.within(process.settled(), start_bound(parent)):
                LOGGER.error("worker %d (pid %d) was not ready within %gs: killing it", slot.number, process.pid,
                             start_bound(parent))  # fmt: skip
                process.signal(signal.SIGKILL)
            if process.ready.done() and not process.ready.exception() and slot.process is process:
                slot.state, slot.started_at = WorkerState.RUNNING, asyncio.get_running_loop().time()
                LOGGER.info("worker %d (pid %d) ready", slot.number, process.pid)
                _maybe_ready(fleet)
                fleet.publish()
        code = await exit_of(process, hang_after(parent.plan.supervisor.max_loop_lag), slot)
        if code is None or slot.process is not process:  # a reload replaced it (and retires it): watch its successor
            continue
        fleet.bury(process)
        slot.last_exit = f"(pid {process.pid}) {'stopped' if parent.stopping else 'died'}: "
        slot.last_exit += process.exit_reason(code)
        for problem in process.problems:
            LOGGER.error("worker %d: %s", slot.number, problem)
        return


def start_bound(parent: Parent) -> float:
    """How long a new worker may take to be ready: its slowest server's start_timeout, plus its start-up."""
    return max((s.start_timeout for s in parent.plan.servers), default=0.0) + READY_SLACK


def hang_after(max_loop_lag: float) -> float:
    """A worker silent this long has its event loop blocked (it reports every 0.5 s): it is killed and replaced."""
    return max(HANG_FLOOR, 2 * max_loop_lag)


async def exit_of(process: WorkerProcess, hang: float, slot: Slot | None = None) -> int | None:
    """Wait for the end of a ready worker; kill it once it has been silent for ``hang`` seconds (gunicorn's worker
    timeout: a handler blocking its loop for good would otherwise hold the connections it accepted for ever).
    None once it no longer serves in ``slot`` (a reload replaced it: it drains, retired, and is watched no more).

    Silence counts only time the parent itself was responsive: when its own loop was blocked (a slow scrape, a GC
    pause, a blocking call) the worker's reports waited unread in the link, and a healthy worker must not be
    killed for that. So a gap of more than STALL between two checks starts the silence afresh at that check."""
    loop = asyncio.get_running_loop()
    checked = since = loop.time()
    while True:
        if await wire.within(asyncio.shield(process.exited), HANG_CHECK):
            return process.exited.result()
        if slot is not None and slot.process is not process:
            return None
        now = loop.time()
        if now - checked > STALL:
            LOGGER.debug("worker %d: the parent's loop stalled %.1fs: its silence counts from now", process.slot,
                         now - checked)  # fmt: skip
            since = now
        checked = now
        silent = now - max(process.reported_at, since)
        if silent > hang:
            LOGGER.error(
                "worker %d (pid %d) sent nothing for %.1fs: its event loop is blocked; killing it",
                process.slot, process.pid, silent,
            )  # fmt: skip
            process.signal(signal.SIGKILL)


def _maybe_ready(fleet: Fleet) -> None:
    if not fleet.ready.done() and all(s.state is WorkerState.RUNNING for s in fleet.slots):
        addresses = list(fleet.addresses.values())
        LOGGER.info("supervisor ready: %d server(s) serving in %d worker processes", len(addresses),
                    len(fleet.slots))  # fmt: skip
        fleet.ready.set_result(addresses)
