"""fleet.Fleet, the parent's view of its workers (``supervisor.workers: N``), in process: real WorkerProcess objects
fed the ``state`` messages a worker sends (wire.py, read by WorkerProcess._take), no worker processes. What is
checked: a server's merged state (running if it runs in any serving worker, else the state to hear about first),
and that a dead worker's counters and restarts stay in both /metrics and ``status`` once it is buried."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from supervisor import wire
from supervisor.address import Address
from supervisor.collector import make_registry
from supervisor.commands import Command, Result
from supervisor.fleet import Fleet
from supervisor.state import ChildState, ChildStatus, ServerStats, WorkerState
from supervisor.status import status_rows
from supervisor.worker_process import ConfigText, WorkerProcess
from tests.helpers import plan_from

SERVERS = ("hp", "echo")


async def _no_commands(command: Command, name: str | None) -> Result:
    raise AssertionError("no command is expected")


def _fleet(tmp_path: Path, workers: int = 2) -> Fleet:
    plan = plan_from(tmp_path, f"""
        supervisor: {{workers: {workers}}}
        servers:
          - {{name: hp, handler: "supervisor.handlers.echo:handle", port: 0}}
          - {{name: echo, handler: "supervisor.handlers.echo:handle", port: 0}}
        """)  # fmt: skip
    addresses = {name: Address("127.0.0.1", 9000 + i) for i, name in enumerate(SERVERS)}
    return Fleet(plan, addresses, _no_commands)


def _spawn(fleet: Fleet, slot: int) -> WorkerProcess:
    """What Parent.spawn and the slot's keeper do with a new worker that became ready: counted, serving its slot."""
    process = WorkerProcess(slot, ConfigText("supervisor.yaml", "", ""), fleet.publish, 1.0)
    fleet.count(process)
    fleet.slots[slot - 1].swap(process)
    fleet.slots[slot - 1].state = WorkerState.RUNNING
    return process


def _report(process: WorkerProcess, **servers: tuple[ChildState, ServerStats]) -> None:
    """``process`` reports its tree like worker.Reporter.send: one JSON line; the fleet republishes on it."""
    children = []
    for name, (state, stats) in servers.items():
        restarts = stats.restarts.total()  # a worker counts both at once (control.py, outcomes.py)
        children.append(ChildStatus(name, state, "", "always", 1.0, restarts + 1, restarts, "",
                                    wanted=state is not ChildState.STOPPED))  # fmt: skip
    message = {
        "t": "state", "ready": True, "shutting_down": False, "lag": 0.0, "blocked": False, "lines": [],
        "children": [wire.child_to_wire(c) for c in children],
        "stats": {name: wire.stats_to_wire(stats) for name, (_, stats) in servers.items()},
    }  # fmt: skip
    process._take(json.loads(json.dumps(message)))


def _dies(fleet: Fleet, process: WorkerProcess) -> None:
    """SIGKILLed: it ends, its keeper buries it and the slot waits for a replacement (worker_keeper's order)."""
    process._ended(-signal.SIGKILL)
    fleet.bury(process)
    fleet.slots[process.slot - 1].state = WorkerState.BACKOFF
    fleet.publish()


def _stats(total: int = 0, active: int = 0, **restarts: int) -> ServerStats:
    return ServerStats(active=active, total=total, handler_errors=total // 10, restarts=Counter(restarts),
                       client_errors=Counter(reset=1))  # fmt: skip


def _status(fleet: Fleet) -> dict[str, tuple[str, int]]:
    """The status table's state and restarts columns, by server (what ``supervisor ctl status`` prints)."""
    return {row["name"]: (row["state"], row["restarts"]) for row in status_rows(fleet)}


async def test_a_dead_workers_restarts_stay_in_status_as_in_metrics(tmp_path: Path) -> None:
    """The audit's case: ``ctl restart hp`` (once in each of 2 workers), then worker 1 is SIGKILLed. Both status
    and supervisor_server_restarts_total keep saying 2, and go on from there with the replacement's restarts."""
    fleet = _fleet(tmp_path)
    registry = make_registry(fleet, "asyncio")

    def metric(name: str, labels: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, labels)

    def manual(server: str = "hp") -> float | None:
        return metric("supervisor_server_restarts_total", {"server": server, "reason": "manual"})

    one, two = _spawn(fleet, 1), _spawn(fleet, 2)
    _report(one, hp=(ChildState.RUNNING, _stats(40, 2, manual=1)), echo=(ChildState.RUNNING, _stats(3, exit=1)))
    _report(two, hp=(ChildState.RUNNING, _stats(60, 3, manual=1)), echo=(ChildState.RUNNING, _stats(5)))
    assert _status(fleet) == {"hp": ("running", 2), "echo": ("running", 1)}
    assert manual() == 2.0

    _dies(fleet, one)
    assert _status(fleet) == {"hp": ("running", 2), "echo": ("running", 1)}  # was hp 1, echo 0: worker 2's alone
    assert (manual(), metric("supervisor_server_restarts_total", {"server": "echo", "reason": "exit"})) == (2.0, 1.0)
    assert metric("supervisor_connections_total", {"server": "hp"}) == 100.0  # the dead one's 40 are kept

    three = _spawn(fleet, 1)  # the replacement starts from nothing
    _report(three, hp=(ChildState.RUNNING, _stats()), echo=(ChildState.RUNNING, _stats()))
    assert _status(fleet) == {"hp": ("running", 2), "echo": ("running", 1)}
    _report(three, hp=(ChildState.RUNNING, _stats(1, failure=1)), echo=(ChildState.RUNNING, _stats()))
    assert _status(fleet) == {"hp": ("running", 3), "echo": ("running", 1)}
    assert (manual(), metric("supervisor_server_restarts_total", {"server": "hp", "reason": "failure"})) == (2.0, 1.0)
    for name in SERVERS:  # one source: the status column is the metric's sum over its reasons
        assert _status(fleet)[name][1] == sum(fleet.counters()[name].restarts.values())


async def test_bury_keeps_a_dead_workers_counters_once_and_drops_its_gauges(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path)
    one, two = _spawn(fleet, 1), _spawn(fleet, 2)
    _report(one, hp=(ChildState.RUNNING, _stats(40, 2, manual=1)))
    _report(two, hp=(ChildState.RUNNING, _stats(60, 3, manual=1, failure=2)))
    before = fleet.counters()["hp"]
    assert (before.total, before.active, before.restarts) == (100, 5, Counter(manual=2, failure=2))

    one._ended(-signal.SIGKILL)  # ended, not buried yet: its last report still counts as a live one
    ended = fleet.counters()["hp"]
    assert (ended.total, ended.active, ended.restarts) == (100, 5, Counter(manual=2, failure=2))
    fleet.bury(one)
    fleet.bury(one)  # a second bury (the shutdown's, after the keeper's) adds nothing
    fleet.slots[0].state = WorkerState.BACKOFF
    after = fleet.counters()["hp"]
    assert (after.total, after.handler_errors, after.client_errors) == (100, 10, Counter(reset=2))
    assert after.restarts == Counter(manual=2, failure=2)
    assert after.active == 3  # a gauge: the dead worker's connections are gone
    assert sum(after.duration_counts) == sum(before.duration_counts)
    assert fleet.processes() == [two]
    assert fleet.counters()["hp"].restarts == after.restarts  # reading the totals never adds to them

    _dies(fleet, two)  # every worker dead: nothing serves hp, its totals stay
    assert fleet.counters()["hp"].restarts == Counter(manual=2, failure=2)
    assert fleet.counters()["hp"].total == 100
    assert _status(fleet) == {"hp": ("starting", 4), "echo": ("starting", 0)}


def _merged_state(fleet: Fleet, *states: ChildState) -> str:
    for slot, state in enumerate(states, start=1):
        _report(_spawn(fleet, slot), hp=(state, _stats()), echo=(ChildState.RUNNING, _stats()))
    return _status(fleet)["hp"][0]


@pytest.mark.parametrize(
    ("states", "shown"),
    [
        ((ChildState.RUNNING, ChildState.RUNNING), "running"),
        ((ChildState.RUNNING, ChildState.FAILED), "running"),  # worker 2 closed its copy: worker 1 takes the clients
        ((ChildState.STOPPED, ChildState.RUNNING), "running"),
        ((ChildState.STOPPED, ChildState.STOPPED), "stopped"),
        ((ChildState.STOPPED, ChildState.FAILED), "failed"),
        ((ChildState.BACKOFF, ChildState.STOPPED), "stopped"),
        ((ChildState.STARTING, ChildState.BACKOFF), "backoff"),
        ((ChildState.STOPPING, ChildState.STARTING), "stopping"),
    ],
)
async def test_a_server_runs_if_it_runs_in_any_serving_worker_else_shows_the_worst(
    tmp_path: Path, states: tuple[ChildState, ChildState], shown: str
) -> None:
    assert _merged_state(_fleet(tmp_path), *states) == shown


async def test_only_serving_workers_decide_a_servers_state(tmp_path: Path) -> None:
    """A worker that is not (or no longer) serving its slot says nothing about a server's state; no serving worker
    at all: starting."""
    fleet = _fleet(tmp_path)
    assert _status(fleet)["hp"] == ("starting", 0)
    _report(_spawn(fleet, 1), hp=(ChildState.STOPPED, _stats()))
    starting = _spawn(fleet, 2)
    fleet.slots[1].state = WorkerState.STARTING  # spawned, not ready yet: it runs hp, but is not serving
    _report(starting, hp=(ChildState.RUNNING, _stats()))
    assert _status(fleet)["hp"] == ("stopped", 0)
    fleet.slots[1].state = WorkerState.RUNNING
    fleet.publish()
    assert _status(fleet)["hp"] == ("running", 0)
