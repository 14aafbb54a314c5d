"""Failures in a running supervisor: the backoff it waits, when it forgets, what it logs, and when it gives up."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from supervisor import GaveUp, Supervisor
from supervisor.state import ChildState
from tests import apps
from tests.helpers import DEADLINE, ask, eventually, plan_from, port_of, running, wait_state


@pytest.fixture(autouse=True)
def _reset_apps() -> None:
    apps.JOURNAL.clear()
    apps.GATES.clear()
    apps.TRIPS.clear()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "supervisor"]


async def test_backoff_grows_between_failures_and_resets_after_a_stable_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "supervisor")
    plan = plan_from(
        tmp_path,
        """
        servers:
          - name: s
            handler: "tests.apps:lines"
            port: 0
            on_handler_error: restart
            backoff: {initial: 100ms, factor: 3, max: 10s, jitter: 0, reset_after: 30s}
        """,
    )
    loop = asyncio.get_running_loop()
    skew = 0.0  # how far the supervisor's clock is ahead of the loop's: a long, stable run without the wait

    async def crash_and_time(generation: int) -> float:
        started = loop.time()
        assert await ask(port_of(sup, "s"), b"crash") == b""
        await wait_state(sup, "s", ChildState.RUNNING, generation=generation)
        return loop.time() - started

    async with running(plan, clock=lambda: loop.time() + skew) as sup:
        first = await crash_and_time(2)
        second = await crash_and_time(3)  # a consecutive failure: three times longer
        skew += 30.0  # generation 3 has now served for reset_after
        third = await crash_and_time(4)  # forgotten: back to the initial delay
    # never earlier than the backoff (less uvloop's millisecond clock steps); the upper bound catches a delay gone wild
    assert 0.098 <= first < 0.1 + 0.5
    assert 0.298 <= second < 0.3 + 0.5
    assert 0.098 <= third < 0.1 + 0.5
    restarting = [m for m in messages(caplog) if m.startswith("server s restarting in")]
    assert restarting == [
        "server s restarting in 0.100s (1 recent restarts)",
        "server s restarting in 0.300s (2 recent restarts)",
        "server s restarting in 0.100s (3 recent restarts)",
    ]


async def test_a_failure_while_already_restarting_is_logged_and_counted_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """one_for_all: a and b fail in the same instant; a's failure restarts b, whose own failure comes after."""
    plan = plan_from(
        tmp_path,
        """
        supervisor: {strategy: one_for_all, max_restarts: 20}
        servers:
          - {name: a, handler: "tests.apps:journaled", port: 0, backoff: {initial: 0}, options: {tripwire: true}}
          - {name: b, handler: "tests.apps:journaled", port: 0, backoff: {initial: 0}, options: {tripwire: true}}
        """,
    )
    async with running(plan) as sup:
        apps.TRIPS["a"].set()
        apps.TRIPS["b"].set()
        for name in "ab":
            await wait_state(sup, name, ChildState.RUNNING, generation=2)
        a, b = sup.snapshot().child("a"), sup.snapshot().child("b")
        assert a is not None
        assert b is not None
        assert (a.restarts, b.restarts) == (1, 1)  # one group restart, not two
        assert b.last_error == "RuntimeError: tripwire"
        assert {c.name: dict(c.stats.restarts) for c in sup.children} == {"a": {"failure": 1}, "b": {"strategy": 1}}
    assert "server b failed while already restarting: RuntimeError: tripwire" in messages(caplog)


async def test_stop_server_from_a_lifespan_stops_a_transient_server(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "supervisor")
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: ok, handler: "tests.apps:lines", port: 0}
          - {name: done, handler: "tests.apps:journaled", port: 0, restart: transient, options: {stop_enter: true}}
        """,
    )
    async with running(plan) as sup:
        await wait_state(sup, "done", ChildState.STOPPED)
        done = sup.snapshot().child("done")
        assert done is not None
        assert (done.restarts, done.last_error) == (0, "")
        assert sup.snapshot().ready  # a transient server that stopped itself is not needed
        assert await ask(port_of(sup, "ok"), b"who") == b"ok#1\n"
    assert apps.JOURNAL == [("done", "enter")]
    log = messages(caplog)
    assert "server done stopped itself" in log
    assert "server done (transient) will not be restarted" in log


async def test_running_raises_the_give_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The test helpers never swallow what serve() raised: a test that expects a give-up must say so."""
    plan = plan_from(
        tmp_path,
        """
        supervisor: {max_restarts: 0}
        servers:
          - {name: s, handler: "tests.apps:lines", port: 0, on_handler_error: restart}
        """,
    )

    async def crash_it() -> None:
        async with running(plan) as sup:
            assert await ask(port_of(sup, "s"), b"crash") == b""
            async with asyncio.timeout(DEADLINE):
                while not sup.snapshot().shutting_down:
                    await sup.changed()
            # the block ends normally: only the helper can make this test see the give-up

    with pytest.raises(GaveUp, match=r"giving up: more than 0 restarts within 60s \(last: server s: RuntimeError"):
        await crash_it()
    assert any(m.startswith("giving up: more than 0 restarts") for m in messages(caplog))


async def test_a_lifespan_that_fails_on_exit_is_logged_and_the_next_generation_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: x, handler: "tests.apps:journaled", port: 0, options: {fail_exit: true}}
          - {name: neighbour, handler: "tests.apps:lines", port: 0}
        """,
    )
    async with running(plan) as sup:
        assert (await sup.control("restart", "x")).text.startswith("restarted x")
        assert await ask(port_of(sup, "x"), b"who") == b"x#2\n"
        assert await ask(port_of(sup, "neighbour"), b"who") == b"neighbour#1\n"
        x = sup.snapshot().child("x")
        assert x is not None
        assert x.restarts == 1  # the manual one: a failure after stopping restarts nothing more
    failed = [m for m in messages(caplog) if m.startswith("server x#")]
    assert failed[0] == "server x#1: failed while stopping: RuntimeError('lifespan exit failed')"


GIVE_UP_WHILE_STOPPING = """
import asyncio, contextlib
STOP = []  # the test puts the supervisor's request_stop here, then a gate that opens once b has a client

async def slow(reader, writer):
    await reader.readexactly(10)  # mid-message: it gets its whole drain budget
    writer.write(b"done")

def crash(options):
    @contextlib.asynccontextmanager
    async def life():
        await STOP[1].wait()
        asyncio.get_running_loop().call_soon(STOP[0], "SIGTERM")  # the stop lands with the failure
        raise RuntimeError("cannot start")
        yield
    return life()
"""


async def test_a_give_up_during_a_shutdown_does_not_cut_the_drains(tmp_path: Path) -> None:
    """Found in review: a give-up decided after a first stop request counted as the second one (force)."""
    (tmp_path / "giveup_mod.py").write_text(GIVE_UP_WHILE_STOPPING)
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: b, handler: "giveup_mod:slow", port: 0, shutdown_timeout: 300ms}
          - {name: a, handler: "giveup_mod:crash", port: 0, after: [b], start_retries: 0}
        """,
    )
    import giveup_mod  # type: ignore[import-not-found]

    loop = asyncio.get_running_loop()
    sup = Supervisor(plan)
    gate = asyncio.Event()
    giveup_mod.STOP[:] = [sup.request_stop, gate]
    task = asyncio.create_task(sup.serve())
    await wait_state(sup, "b", ChildState.RUNNING)
    _, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "b"))
    writer.write(b"abc")
    await eventually(lambda: sup.counters()["b"].active == 1)
    started = loop.time()
    gate.set()
    with pytest.raises(GaveUp):
        async with asyncio.timeout(DEADLINE):
            await task
    # b's connection got its budget, not a forced shutdown (less 1 ms: uvloop's clock counts whole milliseconds)
    assert loop.time() - started >= 0.3 - 0.001
    assert not sup._force.done()
    writer.close()


async def test_a_server_after_one_that_failed_for_good_is_given_up_on(tmp_path: Path) -> None:
    """Found in review: a permanent server `after` a temporary one that failed waited for ever, silently."""
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: db, handler: "tests.apps:journaled", port: 0, restart: temporary, options: {fail_enter: true}}
          - {name: web, handler: "tests.apps:lines", port: 0, after: [db]}
        """,
    )
    sup = Supervisor(plan)
    with pytest.raises(GaveUp, match="server web cannot start: it comes after db, which failed for good"):
        async with asyncio.timeout(DEADLINE):
            await sup.serve()
    web = sup.snapshot().child("web")
    assert web is not None
    assert web.last_error == "waiting for db, which failed and will not be restarted"
