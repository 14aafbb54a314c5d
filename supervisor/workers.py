"""``supervisor.workers: N``: the parent process. It binds every listening socket once and keeps it for its life;
N worker processes (worker.py) run the supervision tree on those sockets (the gunicorn/uvicorn model, not
SO_REUSEPORT: a dying worker's accept queue would be reset with it). A dead worker is replaced with backoff;
too many deaths in the restart window and the parent shuts down in order and exits 1. SIGTERM: the parent lets
its sockets go and every worker drains in parallel, bounded, told by signals.FLEET_STOP that nobody serves after it
(a second signal is passed on: it cuts their waits).
A reload rolls the workers one at a time (worker_reload.py); the old ones drain in the background
(worker_retire.py). Views read the workers through fleet.Fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket

from supervisor import sockets, wire
from supervisor.commands import Command, Result
from supervisor.config import read_config
from supervisor.errors import GaveUp, SupervisorError
from supervisor.fleet import Fleet, Slot
from supervisor.parent_sockets import ParentSockets
from supervisor.plan import Plan
from supervisor.restart import Intensity
from supervisor.signals import FLEET_STOP, handle_signals
from supervisor.state import WorkerState
from supervisor.status import status_table
from supervisor.tree import View
from supervisor.worker_control import named
from supervisor.worker_keeper import keep
from supervisor.worker_process import EXIT_GRACE, ConfigText, WorkerProcess
from supervisor.worker_retire import Retirees

LOGGER = logging.getLogger("supervisor")


async def run_parent(plan: Plan, views: tuple[View, ...]) -> None:
    """Serve ``plan`` with its worker processes until SIGTERM/SIGINT or too many deaths (raises GaveUp)."""
    parent = Parent(plan, _config_text(plan))
    try:
        await parent.run(views)
    finally:
        parent.sockets.close()


def _config_text(plan: Plan) -> ConfigText:
    text, digest = read_config(plan.source)
    if digest != plan.digest:
        raise SupervisorError(f"{plan.source} changed while the supervisor started; run it again")
    return ConfigText(plan.source, text, digest)


class Parent:
    def __init__(self, plan: Plan, config: ConfigText) -> None:
        self.plan = plan
        self.config = config
        self.sockets = ParentSockets.bind(plan)  # for the parent's life
        addresses = {name: sockets.address_of(s) for name, s in self.sockets.items()}
        self.fleet = Fleet(plan, addresses, self.handle)
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._force: asyncio.Future[None] = loop.create_future()
        self._gave_up = ""
        self.stop_reason = ""
        self._intensity = Intensity(plan.supervisor.max_restarts, plan.supervisor.restart_window, loop.time)
        self._keepers: dict[int, asyncio.Task[None]] = {}
        self._retirees = Retirees(self.fleet)
        self.rolling: asyncio.Task[Result] | None = None  # the one reload under way
        # stopped by `stop NAME` until `start`/`restart`: a worker started later (a replacement, a reload's) starts
        # them stopped too, as a single process keeps them stopped through a reload
        self.stopped_servers: set[str] = set()
        self.commanding = asyncio.Lock()  # one named command at a time (worker_control.py)

    # -- control ---------------------------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stopped(self) -> bool:
        """The same as ``stopping``, for a caller whose loop test mypy would take as narrowing the property."""
        return self._stop.is_set()

    def request_stop(self, reason: str) -> None:
        if self._stop.is_set():
            if not self._force.done():
                LOGGER.warning("second stop request (%s): passing it on to the workers, skipping their drains", reason)
                self._force.set_result(None)
                for process in self.fleet.processes():
                    process.signal(signal.SIGTERM)
            return
        self.stop_reason = reason
        self._stop.set()

    async def handle(self, command: Command, name: str | None) -> Result:
        """A control command from the console or ``ctl``, on the parent's loop."""
        if command is Command.SHUTDOWN:
            self.request_stop("control: shutdown")
            return Result(True, "shutting down")
        if command is Command.RELOAD:
            return await self.reload("control")
        if self.stopping:
            return Result(False, "the supervisor is shutting down")
        return await named(self, command, name or "")

    def reload(self, trigger: str) -> asyncio.Future[Result]:
        from supervisor.worker_reload import roll

        if self.rolling is not None and not self.rolling.done():
            LOGGER.warning("reload (%s) refused: a reload is under way", trigger)
            return _done(Result(False, "not reloading: a reload is under way; try again once it is done"))
        if self.stopping or not self.fleet.ready.done():
            why = "shutting down" if self.stopping else "still starting; reload once it is ready"
            LOGGER.warning("reload (%s) refused: the supervisor is %s", trigger, why)
            return _done(Result(False, f"not reloading: the supervisor is {why}"))
        self.rolling = asyncio.create_task(roll(self, trigger), name="reload")
        return asyncio.shield(self.rolling)

    # -- run -----------------------------------------------------------------------------------------------------------

    async def run(self, views: tuple[View, ...]) -> None:
        loop = asyncio.get_running_loop()
        fleet = self.fleet

        def sighup() -> None:
            self.reload("SIGHUP")

        async with contextlib.AsyncExitStack() as stack:
            for view in views:
                await stack.enter_async_context(view(self.plan, fleet))
            with fleet.guard.own.installed(loop), handle_signals(
                loop, self.request_stop, lambda: status_table(fleet), sighup
            ):  # fmt: skip
                for slot in fleet.slots:
                    self.keep(slot)
                await self._stop.wait()
                await self._shutdown()
        if self._gave_up:
            raise GaveUp(self._gave_up)

    def keep(self, slot: Slot) -> None:
        self._keepers[slot.number] = asyncio.create_task(keep(self, slot), name=f"worker-{slot.number}")

    async def spawn(
        self, slot_number: int, config: ConfigText, plan: Plan, pending: dict[str, socket.socket] | None = None
    ) -> WorkerProcess:
        """A worker for ``plan`` on the parent's sockets (and a reload's ``pending`` ones, bound for it)."""
        process = WorkerProcess(slot_number, config, self.fleet.publish, plan.supervisor.shutdown_timeout)
        self.fleet.count(process)
        mine = {**self.sockets, **(pending or {})}
        try:
            await process.start({s.name: mine[s.name] for s in plan.servers}, self.stopped_servers)
        except BaseException:
            self.fleet.bury(process)
            raise
        if self.stopping:  # forked while the shutdown signalled the others: it holds the sockets now, stop it too
            process.signal(_stop_signal(process))
        return process

    def retire(self, process: WorkerProcess) -> asyncio.Future[None]:
        """SIGTERM ``process`` once and let it drain in the background, bounded (done once it is gone and buried)."""
        return self._retirees.retire(process)

    async def wait_stop(self, timeout: float) -> None:
        """Return after ``timeout`` seconds, or at once when the shutdown begins."""
        await wire.within(self._stop.wait(), timeout)

    def record_death(self) -> bool:
        """Count one worker death; False once there were more than max_restarts within restart_window."""
        return self._intensity.record()

    def give_up(self, why: str) -> None:
        """Shut down in order and exit 1; never a second stop request (that would cut the drains)."""
        self._gave_up = self._gave_up or why
        if not self.stopping:
            self.request_stop("gave up")

    async def _shutdown(self) -> None:
        """Every worker drains at once, within its own bound; a second stop request cuts them (request_stop)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        fleet = self.fleet
        fleet.shutting_down = True
        LOGGER.info("shutdown (%s): stopping %d worker process(es)", self.stop_reason, len(fleet.processes()))
        if self.rolling is not None:
            self.rolling.cancel()
        for slot in fleet.slots:
            slot.state = WorkerState.STOPPING if slot.process else WorkerState.STOPPED
        fleet.publish()
        processes = fleet.processes()
        for process in processes:
            if not process.terminating:  # a reload's retiring worker drains already: a second signal would cut it
                process.signal(_stop_signal(process))
        # Our copies go now, not after the drains: a listening socket refuses new clients only once its last
        # descriptor is closed, and the workers close theirs as their drains begin. Kept, it went on queueing
        # clients nobody would accept, reset at exit (a new client hung 2.9 s, then reset; workers: 1 refuses).
        self.sockets.close()
        exits = [p.exited for p in processes]
        if exits:
            every = asyncio.ensure_future(_every(exits))
            bound = max(p.drain_bound for p in processes)  # each worker bounds its own drain
            await asyncio.wait([every, self._force], timeout=bound, return_when=asyncio.FIRST_COMPLETED)
            if not every.done() and self._force.done():
                await asyncio.wait([every], timeout=EXIT_GRACE)  # the workers cut their waits too
            every.cancel()
            for process in processes:
                if not process.exited.done():
                    LOGGER.error("worker %d (pid %d) did not exit in time: killing it", process.slot, process.pid)
                    process.signal(signal.SIGKILL)
            await asyncio.wait(exits, timeout=EXIT_GRACE)
        for task in self._keepers.values():
            task.cancel()
        await asyncio.gather(*self._keepers.values(), return_exceptions=True)
        await self._retirees.close()
        for process in processes:
            fleet.bury(process)
        for slot in fleet.slots:
            slot.state = WorkerState.STOPPED
        fleet.publish()
        LOGGER.info("shutdown complete in %.3fs", loop.time() - started)

    def retune(self, plan: Plan) -> None:
        """A reload's supervisor: section, from now on (the death history is kept)."""
        self._intensity.max_restarts = plan.supervisor.max_restarts
        self._intensity.window = plan.supervisor.restart_window
        self.fleet.guard.max_lag = self.fleet.guard.own.max_lag = plan.supervisor.max_loop_lag

    def drop(self, slot: Slot) -> None:
        """A reload removed ``slot`` (fewer workers): its keeper stops replacing it."""
        if (task := self._keepers.pop(slot.number, None)) is not None:
            task.cancel()


def _stop_signal(process: WorkerProcess) -> signal.Signals:
    """FLEET_STOP for a worker that serves; SIGTERM for one still starting: it may not handle signals yet, and
    SIGINT would then end it with a KeyboardInterrupt traceback (SIGTERM, silently; it holds no connection)."""
    return FLEET_STOP if process.ready.done() else signal.SIGTERM


async def _every(futures: list[asyncio.Future[int]]) -> None:
    await asyncio.wait(futures)


def _done(result: Result) -> asyncio.Future[Result]:
    future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future
