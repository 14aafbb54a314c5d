"""Retiring worker processes (``supervisor.workers: N``): one a reload replaced, one whose slot a reload removed, a
failed new one. It is sent SIGTERM once (it stops accepting at once and drains its connections) and drains in the
background, so a rolling reload moves on to the next slot at once instead of waiting N drains. A task per retiree
waits for its exit within its drain bound, kills it past the bound and buries it; the parent owns them (a shutdown
waits for the retirees with its other workers, never sending them a second SIGTERM, then closes this)."""

from __future__ import annotations

import asyncio
import logging
import signal

from supervisor import wire
from supervisor.fleet import Fleet
from supervisor.worker_process import EXIT_GRACE, WorkerProcess

LOGGER = logging.getLogger("supervisor")


class Retirees:
    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self._tasks: dict[WorkerProcess, asyncio.Task[None]] = {}

    def retire(self, process: WorkerProcess) -> asyncio.Future[None]:
        """Stop ``process`` (SIGTERM, unless it had one: a second would cut its drain); the future is done once it
        exited (or was killed past its drain bound) and was buried. Awaiting it is optional: the drain goes on."""
        if (task := self._tasks.get(process)) is None:
            if not process.terminating:
                process.signal(signal.SIGTERM)
            task = asyncio.create_task(self._drain(process), name=f"worker-{process.slot}-retiring")
            self._tasks[process] = task
            task.add_done_callback(lambda _: self._tasks.pop(process, None))
        return asyncio.shield(task)

    async def _drain(self, process: WorkerProcess) -> None:
        if not process.exited.done():
            if not await wire.within(asyncio.shield(process.exited), process.drain_bound):
                LOGGER.error("worker %d (pid %d) still draining after %gs: killing it", process.slot, process.pid,
                             process.drain_bound)  # fmt: skip
                process.signal(signal.SIGKILL)
                await wire.within(asyncio.shield(process.exited), EXIT_GRACE)
            if process.exited.done():
                LOGGER.info("worker %d (pid %d) retired: %s", process.slot, process.pid,
                            process.exit_reason(process.exited.result()))  # fmt: skip
        self._fleet.bury(process)
        self._fleet.publish()

    async def close(self) -> None:
        """Stop watching (the shutdown has waited for every worker and buries them itself)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
