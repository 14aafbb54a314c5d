"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import Supervisor
from supervisor.notify import notify_view, watchdog_interval
from tests.helpers import DEADLINE, plan_from

CONFIG = """
servers:
  - {name: a, handler: "tests.apps:lines", port: 0}
  - {name: b, handler: "tests.apps:lines", port: 0}
"""


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    yield sock
    sock.close()


async def receive(sock: socket.socket) -> str:
    async with asyncio.timeout(DEADLINE):
        data = await asyncio.get_running_loop().sock_recv(sock, 4096)
    return data.decode()


async def test_ready_after_all_servers_then_stopping(tmp_path: Path, systemd: socket.socket) -> None:
    sup = Supervisor(plan_from(tmp_path, CONFIG))
    env = {"NOTIFY_SOCKET": systemd.getsockname()}
    async with notify_view(sup.plan, sup, env):
        task = asyncio.create_task(sup.serve())
        ready = await receive(systemd)
        assert sup.ready.done()  # sent only once every server serves
        assert ready.split("\n") == ["READY=1", "STATUS=serving 2 server(s)", f"MAINPID={os.getpid()}"]
        sup.request_stop("test")
        assert (await receive(systemd)).startswith("STOPPING=1")
        await task


async def test_watchdog_pings_come_from_the_running_loop(tmp_path: Path, systemd: socket.socket) -> None:
    sup = Supervisor(plan_from(tmp_path, CONFIG))
    env = {"NOTIFY_SOCKET": systemd.getsockname(), "WATCHDOG_USEC": "100000", "WATCHDOG_PID": str(os.getpid())}
    async with notify_view(sup.plan, sup, env):
        task = asyncio.create_task(sup.serve())
        seen = [await receive(systemd) for _ in range(4)]
        assert seen.count("WATCHDOG=1") >= 3
        sup.request_stop("test")
        await task


def test_watchdog_interval_rules() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


async def test_without_notify_socket_nothing_happens(tmp_path: Path) -> None:
    sup = Supervisor(plan_from(tmp_path, CONFIG))
    async with notify_view(sup.plan, sup, {}):
        task = asyncio.create_task(sup.serve())
        await asyncio.wait_for(asyncio.shield(sup.ready), DEADLINE)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("sd_notify")]
        sup.request_stop("test")
        await task
