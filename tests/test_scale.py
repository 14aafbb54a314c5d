"""Many servers in one process: they all start, serve, restart one at a time and stop; a burst of state changes is
published once; the starter looks only at what changed. Speed targets live in tests/bench/bench_scale.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor.agenda import Agenda
from supervisor.child import Child
from supervisor.restart import Backoff
from supervisor.snapshots import Snapshots
from supervisor.state import ChildState, ChildStatus, TreeSnapshot
from tests import apps
from tests.bench import bench_scale
from tests.helpers import ask, assert_not_served, plan_from, port_of, running, wait_state

N = 300


def many(n: int, *, extra: str = "") -> str:
    rows = [
        f'  - {{name: s{i:03d}, handler: "tests.apps:lines", port: 0, on_handler_error: restart, '
        "backoff: {initial: 0}}"
        for i in range(n)
    ]
    return "servers:\n" + "\n".join(rows) + "\n" + extra


def children(tmp_path: Path, n: int, extra: str = "") -> list[Child]:
    return [Child(p, Backoff(p.backoff)) for p in plan_from(tmp_path, many(n, extra=extra)).servers]


async def test_300_servers_start_serve_restart_and_exit(tmp_path: Path) -> None:
    extra = '  - {name: last, handler: "tests.apps:journaled", port: 0, after: [s000, s299]}\n'
    apps.JOURNAL.clear()
    async with running(plan_from(tmp_path, many(N, extra=extra))) as sup:
        snap = sup.snapshot()
        assert snap.ready
        assert len(snap.children) == N + 1
        assert {c.state for c in snap.children} == {ChildState.RUNNING}
        ports = [port_of(sup, f"s{i:03d}") for i in range(N)]
        answers = await asyncio.gather(*(ask(p, b"who") for p in ports))
        assert answers == [f"s{i:03d}#1\n".encode() for i in range(N)]
        assert apps.JOURNAL == [("last", "enter")]  # after its two dependencies, once
        # a crash restarts that one server (backoff 0); the other 299 keep their first generation
        assert await ask(ports[150], b"crash") == b""
        await wait_state(sup, "s150", ChildState.RUNNING, generation=2)
        assert await ask(ports[150], b"who") == b"s150#2\n"
        assert (await sup.control("restart", "s007")).ok
        assert await ask(ports[7], b"who") == b"s007#2\n"
        gens = {c.name: c.generation for c in sup.snapshot().children}
        assert gens.pop("s150") == 2
        assert gens.pop("s007") == 2
        assert set(gens.values()) == {1}
    snap = sup.snapshot()
    assert snap.shutting_down
    assert {c.state for c in snap.children} == {ChildState.STOPPED}
    for port in (ports[0], ports[150], ports[-1]):
        await assert_not_served(port)
    assert apps.JOURNAL == [("last", "enter"), ("last", "exit")]


async def test_a_backoff_restart_among_many_wakes_only_when_due(tmp_path: Path) -> None:
    text = many(50).replace("backoff: {initial: 0}", "backoff: {initial: 0.15, jitter: 0}", 1)  # s000
    async with running(plan_from(tmp_path, text)) as sup:
        port = port_of(sup, "s000")
        loop = asyncio.get_running_loop()
        crashed = loop.time()
        assert await ask(port, b"crash") == b""
        await wait_state(sup, "s000", ChildState.BACKOFF)
        await wait_state(sup, "s000", ChildState.RUNNING, generation=2)
        assert loop.time() - crashed >= 0.149  # uvloop: a millisecond clock
        assert await ask(port, b"who") == b"s000#2\n"


async def test_a_burst_of_changes_is_published_once(tmp_path: Path) -> None:
    kids = children(tmp_path, N)

    def make(statuses: tuple[ChildStatus, ...]) -> TreeSnapshot:
        return TreeSnapshot(statuses)

    snaps = Snapshots(kids, make)
    first = snaps.publishes
    waiter = asyncio.ensure_future(snaps.publisher.changed())
    for child in kids:  # what one reconcile pass does: every server changes state in one loop step
        child.state = ChildState.STARTING
        snaps.touch(child)
    assert snaps.publishes == first  # nothing yet: coalesced to the end of the step
    seen = await asyncio.wait_for(waiter, 5)
    assert snaps.publishes == first + 1
    assert {c.state for c in seen.children} == {ChildState.STARTING}
    # a reader on the loop never sees less than what was changed before it read
    kids[5].state = ChildState.RUNNING
    snaps.touch(kids[5])
    assert snaps.current().children[5].state is ChildState.RUNNING
    assert snaps.current().children[4].state is ChildState.STARTING
    assert snaps.publishes == first + 2
    await asyncio.sleep(0)  # the scheduled flush finds nothing left: no empty publish
    assert snaps.publishes == first + 2


async def test_the_agenda_names_what_changed_and_its_dependents(tmp_path: Path) -> None:
    extra = '  - {name: dep, handler: "tests.apps:lines", port: 0, after: [s003]}\n'
    kids = children(tmp_path, 10, extra)
    agenda = Agenda(kids)
    assert agenda.take(0.0) == kids  # the first look is at every server, in start order
    assert agenda.take(0.0) == []  # then only at what changed
    agenda.touch(kids[7])
    agenda.touch(kids[3])
    assert agenda.take(0.0) == [kids[3], kids[7], kids[10]]  # start order; `dep` comes after s003
    agenda.wake(kids[2], 5.0)
    agenda.wake(kids[2], 5.0)  # once, however often it is looked at in backoff
    assert agenda.next_wake() == 5.0
    assert agenda.take(4.999) == []  # a timer fired a hair early: not due yet, still queued
    assert agenda.take(5.0) == [kids[2]]
    assert agenda.next_wake() is None
    # readiness: every wanted server running
    assert not agenda.all_serving()
    for child in kids:
        child.state = ChildState.RUNNING
    assert agenda.all_serving()
    kids[4].state = ChildState.BACKOFF
    agenda.touch(kids[4])
    assert not agenda.all_serving()
    kids[4].wanted = False  # stopped on purpose: it does not hold up readiness
    assert agenda.all_serving()


@pytest.mark.e2e
def test_bench_scale_smoke(tmp_path: Path) -> None:
    """The benchmark's two measures, small: they run and measure what they claim (figures: the benchmark's)."""
    row = bench_scale.servers_round(tmp_path, 20)
    assert 0 < row["ready"] <= row["answered"]
    assert row["restart"] > 0
    assert row["rss"] > 0
    conns = bench_scale.connections_round(tmp_path, 200)
    assert conns["active"] == conns["expected"] == 200
