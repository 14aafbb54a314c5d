"""The running tree on real sockets (port 0): start order, restarts per type and strategy, kept sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from supervisor import GaveUp, Supervisor
from supervisor.commands import Result
from supervisor.state import ChildState
from tests import apps
from tests.helpers import DEADLINE, ask, assert_not_served, plan_from, port_of, running, wait_state

FAST = "backoff: {initial: 0}"


def three(strategy: str, *, extra: str = "") -> str:
    return f"""
    supervisor: {{strategy: {strategy}, max_restarts: 20}}
    servers:
      - {{name: a, handler: "tests.apps:journaled", port: 0, {FAST}}}
      - {{name: b, handler: "tests.apps:journaled", port: 0, on_handler_error: restart, {FAST}{extra}}}
      - {{name: c, handler: "tests.apps:journaled", port: 0, {FAST}}}
    """


@pytest.fixture(autouse=True)
def _clear_journal() -> None:
    apps.JOURNAL.clear()


async def test_ready_value_lists_every_bound_address(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "supervisor")
    plan = plan_from(tmp_path, three("one_for_one"))
    async with running(plan) as sup:
        addresses = sup.ready.result()
        assert [a.port for a in addresses] == [port_of(sup, n) for n in "abc"]
        assert all(a.port > 0 and a.host == "127.0.0.1" for a in addresses)
        assert await ask(port_of(sup, "a"), b"hello") == b"hello\n"
        assert sup.snapshot().ready
    messages = [r.getMessage() for r in caplog.records]
    listening = [m for m in messages if " listening on " in m]
    assert [m.split()[1] for m in listening] == ["a", "b", "c"]
    assert messages.index("supervisor ready: 3 server(s) serving") > messages.index(listening[-1])


async def test_after_orders_start_and_reverses_stop(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: api, handler: "tests.apps:journaled", port: 0, after: [db, cache]}
          - {name: db, handler: "tests.apps:journaled", port: 0}
          - {name: cache, handler: "tests.apps:journaled", port: 0, after: [db]}
        """,
    )
    assert [s.name for s in plan.servers] == ["db", "cache", "api"]
    async with running(plan):
        assert apps.JOURNAL == [("db", "enter"), ("cache", "enter"), ("api", "enter")]
    assert apps.JOURNAL[3:] == [("api", "exit"), ("cache", "exit"), ("db", "exit")]


async def test_handler_error_with_log_policy_keeps_serving(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    plan = plan_from(tmp_path, three("one_for_one"))
    async with running(plan) as sup:
        port = port_of(sup, "a")
        assert await ask(port, b"crash") == b""  # that connection is closed
        assert await ask(port, b"who") == b"a#1\n"  # same generation still serving
        a = next(c for c in sup.children if c.name == "a")
        assert a.stats.handler_errors == 1
        assert a.restarts == 0
    assert any("server a: handler error, connection closed" in r.getMessage() for r in caplog.records)


async def test_restart_keeps_the_socket_and_refuses_nobody(tmp_path: Path) -> None:
    plan = plan_from(tmp_path, three("one_for_one"))
    async with running(plan) as sup:
        port = port_of(sup, "b")
        refused = served = 0

        async def probe() -> None:
            nonlocal refused, served
            for _ in range(200):  # bounded: ~200 short connections
                try:
                    if await ask(port, b"ping", timeout=2) == b"ping\n":
                        served += 1
                except ConnectionRefusedError:
                    refused += 1

        prober = asyncio.create_task(probe())
        assert await ask(port, b"crash") == b""
        await wait_state(sup, "b", ChildState.RUNNING, generation=2)
        await prober
        assert refused == 0
        assert served == 200
        assert await ask(port, b"who") == b"b#2\n"
        assert port_of(sup, "b") == port
        b = next(c for c in sup.children if c.name == "b")
        assert b.stats.restarts["failure"] == 1
        # one_for_one: the siblings were not touched
        assert [c.generation for c in sup.children] == [1, 2, 1]


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [("one_for_one", ["b"]), ("one_for_all", ["a", "b", "c"]), ("rest_for_one", ["b", "c"])],
)
async def test_strategies_restart_the_right_siblings_in_order(
    tmp_path: Path, strategy: str, restarted: list[str]
) -> None:
    plan = plan_from(tmp_path, three(strategy))
    async with running(plan) as sup:
        apps.JOURNAL.clear()
        assert await ask(port_of(sup, "b"), b"crash") == b""
        for name in restarted:
            await wait_state(sup, name, ChildState.RUNNING, generation=2)
        generations = {c.name: c.generation for c in sup.children}
        assert generations == {n: 2 if n in restarted else 1 for n in "abc"}
        reasons = {c.name: dict(c.stats.restarts) for c in sup.children}
        assert reasons == {n: {"failure": 1} if n == "b" else {"strategy": 1} if n in restarted else {} for n in "abc"}
        enters = [name for name, what in apps.JOURNAL if what == "enter"]
        assert enters == restarted  # started again in start order
        for name in restarted:
            assert await ask(port_of(sup, name), b"who") == f"{name}#2\n".encode()


async def test_transient_and_temporary(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "supervisor")
    plan = plan_from(
        tmp_path,
        f"""
        servers:
          - {{name: t1, handler: "tests.apps:lines", port: 0, restart: transient, on_handler_error: restart, {FAST}}}
          - {{name: t2, handler: "tests.apps:lines", port: 0, restart: transient, {FAST}}}
          - {{name: tmp, handler: "tests.apps:lines", port: 0, restart: temporary, on_handler_error: restart}}
          - {{name: p, handler: "tests.apps:lines", port: 0, restart: permanent, {FAST}}}
        """,
    )
    async with running(plan) as sup:
        # transient: a failure is restarted...
        await ask(port_of(sup, "t1"), b"crash")
        await wait_state(sup, "t1", ChildState.RUNNING, generation=2)
        # ...a normal stop is not, and the port is released
        t2 = port_of(sup, "t2")
        await ask(t2, b"stop")
        await wait_state(sup, "t2", ChildState.STOPPED)
        await assert_not_served(t2)
        # temporary: never restarted, even after a failure
        tmp = port_of(sup, "tmp")
        await ask(tmp, b"crash")
        await wait_state(sup, "tmp", ChildState.FAILED)
        await assert_not_served(tmp)
        # permanent: even a normal stop is restarted
        await ask(port_of(sup, "p"), b"stop")
        await wait_state(sup, "p", ChildState.RUNNING, generation=2)
        # readiness only counts servers that are meant to run
        assert sup.snapshot().ready
        reasons = {c.name: dict(c.stats.restarts) for c in sup.children}
    assert reasons == {"t1": {"failure": 1}, "t2": {}, "tmp": {}, "p": {"exit": 1}}
    messages = [r.getMessage() for r in caplog.records]
    for line in (
        "server t2 stopped itself",
        "server t2 (transient) will not be restarted",
        "server tmp failed: RuntimeError: crash requested",
        "server tmp (temporary) will not be restarted",
        "server p stopped itself",
        "server p restarting in 0.000s (2 recent restarts)",
    ):
        assert line in messages, line


async def test_lifespan_failures_are_restarts(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        f"""
        servers:
          - name: bg
            handler: "tests.apps:journaled"
            port: 0
            {FAST}
            options: {{background_fails_after: 0.05}}
        """,
    )
    async with running(plan) as sup:
        await wait_state(sup, "bg", ChildState.RUNNING, generation=3)
        child = sup.snapshot().child("bg")
        assert child is not None
        assert "background task failed" in child.last_error


async def test_lifespan_enter_failure_gives_up_after_max_restarts(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        f"""
        supervisor: {{max_restarts: 3, restart_window: 60s}}
        servers:
          - {{name: ok, handler: "tests.apps:lines", port: 0}}
          - {{name: bad, handler: "tests.apps:journaled", port: 0, {FAST}, options: {{fail_enter: true}}}}
        """,
    )
    sup = Supervisor(plan)
    async with asyncio.timeout(DEADLINE):
        with pytest.raises(GaveUp, match=r"more than 3 restarts within 60s \(last: server bad"):
            await sup.serve()
    assert apps.JOURNAL == [("bad", "enter")] * 4
    assert sup.snapshot().child("bad").state is ChildState.FAILED  # type: ignore[union-attr]
    assert sup.snapshot().child("ok").state is ChildState.STOPPED  # type: ignore[union-attr]


async def test_port_in_use_is_retried_until_free(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = socket.create_server(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    plan = plan_from(
        tmp_path,
        f"""
        servers:
          - {{name: late, handler: "tests.apps:lines", port: {port}, backoff: {{initial: 10ms, max: 50ms}}}}
        """,
    )
    sup = Supervisor(plan)
    task = asyncio.create_task(sup.serve())
    try:
        async with asyncio.timeout(DEADLINE):
            while sup.snapshot().child("late").restarts < 2:  # type: ignore[union-attr]
                await sup.changed()
        assert not sup.ready.done()
        blocker.close()
        async with asyncio.timeout(DEADLINE):
            await asyncio.shield(sup.ready)
        assert await ask(port, b"back") == b"back\n"
    finally:
        blocker.close()
        sup.request_stop("test")
        await task
    assert any("server late failed: OSError: [Errno 98]" in r.getMessage() for r in caplog.records)


async def test_control_restart_stop_start(tmp_path: Path) -> None:
    plan = plan_from(tmp_path, three("one_for_one"))
    async with running(plan) as sup:
        port = port_of(sup, "a")
        assert (await sup.control("restart", "a")).text.startswith("restarted a (127.0.0.1:")
        assert await ask(port, b"who") == b"a#2\n"
        assert await sup.control("stop", "a") == Result(True, "stopped a")
        await assert_not_served(port)
        assert (await sup.control("start", "a")).text.startswith("started a")
        assert await ask(port_of(sup, "a"), b"who") == b"a#3\n"
        assert await sup.control("restart", "zz") == Result(False, "no server named 'zz'; servers: a, b, c")
        assert sup.children[0].stats.restarts["manual"] == 1


async def test_old_generation_drains_beside_the_new_one(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        f"""
        servers:
          - {{name: s, handler: "tests.apps:lines", port: 0, {FAST}, shutdown_timeout: 5s}}
        """,
    )
    async with running(plan) as sup:
        port = port_of(sup, "s")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"who\n")
        assert await reader.readline() == b"s#1\n"  # this connection is the first generation's
        writer.write(b"sleep 0.3\n")
        await writer.drain()
        await sup.control("restart", "s")
        # the new generation serves at once while the old one finishes its in-flight request
        assert await ask(port, b"who") == b"s#2\n"
        async with asyncio.timeout(DEADLINE):
            assert await reader.readline() == b"slept\n"
            # draining: the old generation's idle connection then reads end-of-stream and is closed
            assert await reader.readline() == b""
        writer.close()


async def test_stop_request_during_backoff_exits_promptly(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - name: s
            handler: "tests.apps:lines"
            port: 0
            on_handler_error: restart
            backoff: {initial: 30s, max: 30s}
        """,
    )
    async with running(plan) as sup:
        await ask(port_of(sup, "s"), b"crash")
        await wait_state(sup, "s", ChildState.BACKOFF)
        loop = asyncio.get_running_loop()
        started = loop.time()
    # the 30 s backoff timer must not hold the shutdown
    assert loop.time() - started < 0.3


async def test_a_server_that_starts_stopped_does_not_hold_up_its_dependents(tmp_path: Path) -> None:
    """A worker replacing one where `a` was stopped by hand starts `a` stopped; `b` (after: a) was running there, so
    it runs here too, and the tree is ready: as in the process it replaces (where `a` stopped after `b` started)."""
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: a, handler: "supervisor.handlers.echo:handle", port: 0}
          - {name: b, handler: "supervisor.handlers.echo:handle", port: 0, after: [a]}
        """,
    )
    sup = Supervisor(plan, stopped={"a"})
    task = asyncio.create_task(sup.serve())
    try:
        async with asyncio.timeout(DEADLINE):
            await sup.ready
        assert [(c.name, c.state) for c in sup.snapshot().children] == [
            ("a", ChildState.STOPPED),
            ("b", ChildState.RUNNING),
        ]
        started = await sup.control("start", "a")
        assert started.ok, started
        await wait_state(sup, "a", ChildState.RUNNING)
    finally:
        sup.request_stop("test")
        await task
