"""The parent's side of ``supervisor.workers: N`` in process, without worker processes: hang detection of a worker
(worker_keeper.exit_of) driven with a fake worker and a stalled loop, and the fleet's slots across resizes. The
real processes: test_workers.py."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import cast

import pytest

from supervisor import worker_keeper
from supervisor.collector import make_registry
from supervisor.commands import Command, Result
from supervisor.fleet import Fleet, summed
from supervisor.state import WorkerState
from supervisor.worker_process import WorkerProcess
from tests.helpers import plan_from

CHECK = 0.2  # worker_keeper.HANG_CHECK, shortened for these tests
HANG = 1.0


@pytest.fixture(autouse=True)
def fast_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_keeper, "HANG_CHECK", CHECK)
    monkeypatch.setattr(worker_keeper, "STALL", 2 * CHECK)


class FakeWorker:
    """What exit_of reads of a worker: its pid and slot, its last report's time, its end; SIGKILL ends it."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.slot, self.pid = 1, 4242
        self.reported_at = loop.time()
        self.exited: asyncio.Future[int] = loop.create_future()
        self.signals: list[signal.Signals] = []
        self.reporting = True

    def signal(self, sig: signal.Signals) -> None:
        self.signals.append(sig)
        if sig is signal.SIGKILL and not self.exited.done():
            self.exited.set_result(-signal.SIGKILL)

    async def report(self, every: float = 0.05) -> None:
        """Report like a healthy worker (every 0.5 s in real life) whenever ``reporting``; bounded to 60 s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not self.exited.done() and loop.time() < deadline:
            if self.reporting:
                self.reported_at = loop.time()
            await asyncio.sleep(every)


def _watch(worker: FakeWorker) -> asyncio.Task[int | None]:
    return asyncio.create_task(worker_keeper.exit_of(cast(WorkerProcess, worker), HANG))


def _stall_soon(worker: FakeWorker, resume_after: float | None) -> asyncio.Event:
    """Block the loop for longer than HANG (a slow scrape, a blocking call in the parent) in 0.1 s. The worker's
    reports are read only ``resume_after`` seconds after the stall (its link's reader had not run yet at the
    first check after it), or never again (None). The event is set when the stall is over."""
    loop = asyncio.get_running_loop()
    over = asyncio.Event()

    def stall() -> None:
        worker.reporting = False
        time.sleep(HANG + 2 * CHECK)
        over.set()
        if resume_after is not None:
            loop.call_later(resume_after, setattr, worker, "reporting", True)

    loop.call_later(0.1, stall)
    return over


async def test_a_stall_of_the_parents_own_loop_does_not_kill_a_healthy_worker() -> None:
    worker = FakeWorker()
    reporter = asyncio.create_task(worker.report())
    watch = _watch(worker)
    over = _stall_soon(worker, resume_after=CHECK)
    await asyncio.wait_for(over.wait(), 10)
    # a few checks after the stall, with the worker's reports read again: it is not taken for hung
    done, _ = await asyncio.wait([watch], timeout=HANG + 3 * CHECK)
    assert not done, "killed the worker for the parent's own stall"
    worker.exited.set_result(0)
    assert await asyncio.wait_for(watch, 5) == 0
    assert worker.signals == []
    await asyncio.wait_for(reporter, 5)


async def test_a_worker_silent_after_the_parents_stall_is_killed_for_its_own_silence_only() -> None:
    loop = asyncio.get_running_loop()
    worker = FakeWorker()
    watch = _watch(worker)
    over = _stall_soon(worker, resume_after=None)
    await asyncio.wait_for(over.wait(), 10)
    stalled_until = loop.time()
    assert await asyncio.wait_for(watch, 10) == -signal.SIGKILL
    assert worker.signals == [signal.SIGKILL]
    assert loop.time() - stalled_until >= HANG - CHECK  # the stall itself did not count as its silence


async def test_a_silent_worker_is_killed() -> None:
    loop = asyncio.get_running_loop()
    worker = FakeWorker()
    started = loop.time()
    assert await asyncio.wait_for(_watch(worker), 10) == -signal.SIGKILL
    assert worker.signals == [signal.SIGKILL]
    assert HANG <= loop.time() - started <= HANG + 3 * CHECK


async def _no_commands(command: Command, name: str | None) -> Result:
    raise AssertionError("no command is expected")


async def test_a_slot_number_keeps_its_restart_count_across_a_shrink_and_a_grow(tmp_path: Path) -> None:
    """supervisor_worker_restarts_total{worker="3"} never goes backwards: a reload to workers: 1 and a later one
    back to 3 find slot 3's count where it was."""
    plan = plan_from(tmp_path, """
        supervisor: {workers: 3}
        servers:
          - {name: echo, handler: "supervisor.handlers.echo:handle", port: 0}
        """)  # fmt: skip
    fleet = Fleet(plan, {}, _no_commands)
    registry = make_registry(fleet, "asyncio")

    def restarts(slot: int) -> float | None:
        return registry.get_sample_value("supervisor_worker_restarts_total", {"worker": str(slot)})

    fleet.slots[1].restarts, fleet.slots[2].restarts = 1, 2  # what the slots' keepers counted: deaths replaced
    fleet.publish()
    assert (restarts(2), restarts(3)) == (1.0, 2.0)
    added, removed = fleet.resize(1)
    fleet.publish()
    assert (added, [s.number for s in removed]) == ([], [2, 3])
    assert (restarts(2), restarts(3)) == (None, None)  # no such worker now
    added, removed = fleet.resize(3)
    fleet.publish()
    assert ([s.number for s in added], removed) == ([2, 3], [])
    assert (restarts(1), restarts(2), restarts(3)) == (0.0, 1.0, 2.0)
    assert [w.restarts for w in fleet.snapshot().workers] == [0, 1, 2]


class FakeCommands:
    """A worker that takes ``seconds`` to answer a server command, counting how many run at once."""

    running = 0
    most = 0

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds

    async def command(self, command: Command, name: str) -> Result:
        FakeCommands.running += 1
        FakeCommands.most = max(FakeCommands.most, FakeCommands.running)
        try:
            await asyncio.sleep(self.seconds)  # the worker's own restart of NAME
        finally:
            FakeCommands.running -= 1
        return Result(True, f"{command}ed {name}")


@pytest.mark.parametrize(("command", "at_once"), [(Command.RESTART, 1), (Command.STOP, 3), (Command.START, 3)])
async def test_restart_runs_in_one_worker_after_the_other_stop_and_start_in_all_at_once(
    tmp_path: Path, command: Command, at_once: int
) -> None:
    plan = plan_from(tmp_path, """
        supervisor: {workers: 3}
        servers:
          - {name: echo, handler: "supervisor.handlers.echo:handle", port: 0}
        """)  # fmt: skip
    fleet = Fleet(plan, {}, _no_commands)
    for slot in fleet.slots:
        slot.process, slot.state = cast(WorkerProcess, FakeCommands()), WorkerState.RUNNING
    FakeCommands.running = FakeCommands.most = 0
    result = summed(await asyncio.wait_for(fleet.steps(command, "echo"), 10))
    assert result == Result(True, f"{command}ed echo in 3 worker(s)")
    assert FakeCommands.most == at_once
