"""The kept listening socket, proved without luck: clients that arrive while no generation serves, backlog, IPv6."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.commands import Result
from supervisor.state import ChildState
from tests import apps
from tests.e2e_util import require_tool
from tests.helpers import DEADLINE, ask, assert_not_served, eventually, plan_from, port_of, running, wait_state

GATED = """
servers:
  - name: g
    handler: "tests.apps:gated"
    port: 0
    on_handler_error: restart
    backoff: {initial: 0}
    options: {from_generation: 2}
"""


@pytest.fixture(autouse=True)
def _gates() -> Iterator[None]:
    apps.GATES.clear()
    yield
    for gate in apps.GATES.values():  # a failed test must not leave a lifespan waiting through the shutdown
        gate.set()


async def test_clients_arriving_while_no_generation_serves_wait_for_the_next_one(tmp_path: Path) -> None:
    """The restart gap held open on purpose: generation 2's lifespan waits at a gate while clients connect."""
    async with running(plan_from(tmp_path, GATED)) as sup:
        port = port_of(sup, "g")
        assert await ask(port, b"who") == b"g#1\n"
        assert await ask(port, b"crash") == b""
        await wait_state(sup, "g", ChildState.STARTING, generation=2)  # held at the gate: nobody serves now
        clients = []
        for _ in range(20):
            # connect() succeeding is the kept socket: with the listener closed this would be refused
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"who\n")
            await writer.drain()
            clients.append((reader, writer))
        assert sup.snapshot().child("g").state is ChildState.STARTING  # type: ignore[union-attr]
        apps.GATES["g"].set()
        async with asyncio.timeout(DEADLINE):
            answers = [await reader.readline() for reader, _ in clients]
        assert answers == [b"g#2\n"] * 20  # every one was served, by the next generation
        for _, writer in clients:
            writer.close()


async def test_a_temporary_server_that_ended_releases_its_port(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: tmp, handler: "tests.apps:lines", port: 0, restart: temporary, on_handler_error: restart}
        """,
    )
    async with running(plan) as sup:
        port = port_of(sup, "tmp")
        assert await ask(port, b"crash") == b""
        await wait_state(sup, "tmp", ChildState.FAILED)
        await assert_not_served(port)
        with socket.create_server(("127.0.0.1", port)):  # the port can be bound again: it was closed, not kept
            pass


async def test_backlog_is_the_listen_queue_length(tmp_path: Path) -> None:
    ss = require_tool("ss")
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: q, handler: "tests.apps:lines", port: 0, backlog: 37}
          - {name: d, handler: "tests.apps:lines", port: 0}
        """,
    )
    async with running(plan) as sup:
        ports = {name: port_of(sup, name) for name in ("q", "d")}
        out = await asyncio.to_thread(
            subprocess.run, [ss, "-Hltn"], capture_output=True, text=True, timeout=10, check=True
        )
    # for a listening socket, ss shows the backlog in the Send-Q column
    queues = {
        int(m[2]): int(m[1]) for m in re.finditer(r"^LISTEN\s+\d+\s+(\d+)\s+127\.0\.0\.1:(\d+)\s", out.stdout, re.M)
    }
    assert queues[ports["q"]] == 37
    assert queues[ports["d"]] == 1024  # the default


async def test_ipv6_loopback(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: six, handler: "tests.apps:lines", host: "::1", port: 0}
        """,
    )
    async with running(plan) as sup:
        (address,) = sup.ready.result()
        assert (address.host, str(address)) == ("::1", f"[::1]:{address.port}")
        port = address.port
        assert await ask(port, b"who", host="::1") == b"six#1\n"
        assert await sup.control("restart", "six") == Result(True, f"restarted six ([::1]:{port})")
        assert await ask(port, b"who", host="::1") == b"six#2\n"
        with pytest.raises(ConnectionRefusedError):  # bound to ::1 only, not to IPv4 loopback
            await ask(port, b"who")


async def test_a_shutdown_in_a_restart_gap_serves_the_waiting_clients_with_the_draining_generation(
    tmp_path: Path,
) -> None:
    """Closed for good while clients wait for a next generation that never comes: the generation still draining
    (the heir) answers them. Before, they were reset -- and so was any connection a worker had taken from the
    shared accept queue in the instant its listener closed (a rolling reload's old worker)."""
    async with running(plan_from(tmp_path, GATED)) as sup:
        port = port_of(sup, "g")
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_writer.write(b"work 3\n")  # in flight on generation 1 through its drain
        await busy_writer.drain()
        async with asyncio.timeout(DEADLINE):
            assert await busy_reader.readline() == b"working\n"
        assert await ask(port, b"crash") == b""
        await wait_state(sup, "g", ChildState.STARTING, generation=2)  # held at the gate: nobody serves now
        clients = []
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"who\n")
            await writer.drain()
            clients.append((reader, writer))
        await eventually(lambda: sup.children[0].stats.parked == 5)
        sup.request_stop("test")  # the listener closes for good; generation 2 never attaches
        async with asyncio.timeout(DEADLINE):
            answers = [await reader.read() for reader, _ in clients]
            assert await busy_reader.read() == b"done\n"  # the heir's own request finished too
        assert answers == [b"g#1\n"] * 5
        for _, writer in clients:
            writer.close()
        busy_writer.close()


def _answer(client: socket.socket) -> bytes:
    client.settimeout(DEADLINE)
    with contextlib.suppress(ConnectionError):
        return client.makefile("rb").readline()
    return b"reset"


async def test_a_connection_accepted_as_the_shutdown_begins_is_answered(tmp_path: Path) -> None:
    """The loop accepts it in the iteration the shutdown closes the socket, with no connection left to drain: the
    generation waits for the accept under way (Listener.settled) and answers it. Before, its empty drain was over
    at once and the connection found nobody to serve it: reset (a rolling reload's resets under load)."""
    async with running(plan_from(tmp_path, "servers: [{name: e, handler: 'tests.apps:lines', port: 0}]")) as sup:
        port = port_of(sup, "e")
        client = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)  # in the accept queue now
        client.sendall(b"who\n")
        # the loop's next iteration runs this task first, then the accept of the client (asyncio's order: what
        # was scheduled before the poll, then what the poll found): the stop request lands between the two
        await asyncio.sleep(0)
        sup.request_stop("test")
        with contextlib.closing(client):
            assert await asyncio.to_thread(_answer, client) == b"e#1\n"
