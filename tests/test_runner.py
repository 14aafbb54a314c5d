"""The pieces of one server generation: the draining reader, and what counts as a server failure."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from supervisor import Supervisor
from supervisor.commands import Result
from supervisor.state import ChildState
from supervisor.streams import FRESH_WINDOW, DrainState, Reader
from tests import apps
from tests.helpers import DEADLINE, ask, plan_from, port_of, running, wait_state


def draining_reader(*, restart: bool = False, fresh: bool = False, age: float = 0.0) -> Reader:
    """A reader whose generation is draining (for a restart or a shutdown), accepted ``age`` seconds ago."""
    reader = Reader(2**16, asyncio.get_running_loop())
    reader.owner = cast(DrainState, SimpleNamespace(draining=True, spare_fresh=restart))
    reader.accepted_at = asyncio.get_running_loop().time() - age
    if not fresh:
        reader.feed_data(b"GET / HTTP/1.1\n")  # one message served already
        assert reader._buffer  # type: ignore[attr-defined]
        reader._buffer.clear()  # type: ignore[attr-defined]
    return reader


async def test_reader_waiting_for_the_next_message_reads_eof_while_draining() -> None:
    reader = draining_reader()
    assert await reader.readline() == b""
    reader.feed_data(b"late bytes")  # a client still sending after the injected end-of-stream: dropped
    assert await reader.read() == b""


async def test_a_fresh_connection_is_served_by_a_restarting_generation() -> None:
    reader = draining_reader(restart=True, fresh=True)  # accepted an instant before the restart
    line = asyncio.ensure_future(reader.readline())
    await asyncio.sleep(0)
    assert not line.done()  # its request is still on the way: wait for it
    reader.feed_data(b"first\n")
    assert await line == b"first\n"
    assert await reader.readline() == b""  # then it is between messages like any other


async def test_a_quiet_connection_is_not_fresh_for_ever() -> None:
    """A client that never sent a byte but came long ago (a listen-only chat member) is between messages."""
    reader = draining_reader(restart=True, fresh=True, age=FRESH_WINDOW + 0.5)
    assert await reader.readline() == b""


async def test_a_fresh_connection_is_ended_at_shutdown() -> None:
    assert await draining_reader(restart=False, fresh=True).readline() == b""


async def test_reader_with_buffered_bytes_finishes_the_message() -> None:
    reader = draining_reader()
    reader.feed_data(b"GET / HT")
    line = asyncio.ensure_future(reader.readline())
    await asyncio.sleep(0)  # let it block on the partial line
    reader.feed_data(b"TP/1.1\n")
    assert await line == b"GET / HTTP/1.1\n"


async def test_reader_in_readexactly_is_never_cut() -> None:
    reader = draining_reader()
    body = asyncio.ensure_future(reader.readexactly(5))
    await asyncio.sleep(0)  # waiting for a promised body, nothing buffered yet
    assert not body.done()
    reader.feed_data(b"hello")
    assert await body == b"hello"


async def test_reader_not_draining_waits_as_usual() -> None:
    reader = Reader(2**16, asyncio.get_running_loop())
    line = asyncio.ensure_future(reader.readline())
    await asyncio.sleep(0)
    assert not line.done()
    reader.feed_data(b"x\n")
    assert await line == b"x\n"


async def test_body_being_read_survives_shutdown(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers: [{name: f, handler: "tests.apps:framed", port: 0}]
        """,
    )
    sup = Supervisor(plan)
    task = asyncio.create_task(sup.serve())
    await asyncio.wait_for(asyncio.shield(sup.ready), DEADLINE)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "f"))
    writer.write(b"LEN 5\n")
    assert await reader.readline() == b"go\n"  # the handler now waits in readexactly(5)
    sup.request_stop("test")
    await wait_state(sup, "f", ChildState.STOPPING)  # draining: idle readers are being ended now
    writer.write(b"hello")
    async with asyncio.timeout(DEADLINE):
        assert await reader.readline() == b"hello\n"
        assert await reader.read() == b""  # then, between messages, end-of-stream
        await task
    writer.close()


async def test_a_slow_start_holds_up_nobody_else(tmp_path: Path) -> None:
    apps.GATES.clear()
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: slow, handler: "tests.apps:gated", port: 0}
          - {name: s, handler: "tests.apps:lines", port: 0, on_handler_error: restart, backoff: {initial: 0}}
        """,
    )
    sup = Supervisor(plan)
    task = asyncio.create_task(sup.serve())
    try:
        await wait_state(sup, "s", ChildState.RUNNING)
        assert sup.snapshot().child("slow").state is ChildState.STARTING  # type: ignore[union-attr]
        await ask(port_of(sup, "s"), b"crash")
        await wait_state(sup, "s", ChildState.RUNNING, generation=2)  # restarted while slow still starts
        assert await sup.control("stop", "s") == Result(True, "stopped s")  # control answers too
        assert not sup.ready.done()
        apps.GATES["slow"].set()
        async with asyncio.timeout(DEADLINE):
            await asyncio.shield(sup.ready)
    finally:
        apps.GATES.setdefault("slow", asyncio.Event()).set()
        sup.request_stop("test")
        await task


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_stop_right_after_a_group_restart_is_still_bounded(tmp_path: Path, strategy: str) -> None:
    plan = plan_from(
        tmp_path,
        f"""
        supervisor: {{strategy: {strategy}, shutdown_timeout: 2s}}
        servers:
          - {{name: a, handler: "tests.apps:lines", port: 0, backoff: {{initial: 0}}}}
          - {{name: b, handler: "tests.apps:lines", port: 0, backoff: {{initial: 0}}, on_handler_error: restart}}
          - {{name: c, handler: "tests.apps:lines", port: 0, backoff: {{initial: 0}}}}
        """,
    )
    sup = Supervisor(plan)
    task = asyncio.create_task(sup.serve())
    await asyncio.wait_for(asyncio.shield(sup.ready), DEADLINE)
    await ask(port_of(sup, "b"), b"crash")
    sup.request_stop("test")  # while the group restart is under way
    async with asyncio.timeout(DEADLINE):
        await task
    assert all(not c.live for c in sup.children)


async def test_accepted_connections_have_nodelay(tmp_path: Path) -> None:
    """Without TCP_NODELAY each keep-alive response waits ~40 ms for a delayed ACK on asyncio's loop."""
    plan = plan_from(
        tmp_path,
        """
        servers: [{name: s, handler: "tests.apps:lines", port: 0}]
        """,
    )
    async with running(plan) as sup:
        assert await ask(port_of(sup, "s"), b"nodelay") == b"1\n"
