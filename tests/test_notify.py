"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import Supervisor
from supervisor.notify import notify_view, watchdog_interval
from tests.helpers import DEADLINE, plan_from, write_config_file

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


async def test_a_reload_sends_reloading_then_ready(tmp_path: Path, systemd: socket.socket) -> None:
    """What systemd's Type=notify-reload expects: RELOADING=1 with the monotonic time, then READY=1."""
    sup = Supervisor(plan_from(tmp_path, CONFIG))
    env = {"NOTIFY_SOCKET": systemd.getsockname()}
    async with notify_view(sup.plan, sup, env):
        task = asyncio.create_task(sup.serve())
        assert (await receive(systemd)).startswith("READY=1")
        write_config_file(tmp_path, CONFIG + '  - {name: c, handler: "tests.apps:lines", port: 0}\n')
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert (await sup.reload("test")).ok
        reloading = (await receive(systemd)).split("\n")
        assert reloading[0] == "RELOADING=1"
        usec = int(reloading[1].removeprefix("MONOTONIC_USEC="))
        assert before <= usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert (await receive(systemd)).split("\n") == ["READY=1", "STATUS=serving 3 server(s); last reload applied"]
        write_config_file(tmp_path, "servers: 3")  # invalid: begins and ends in one step of the loop
        assert (await sup.reload("test")).invalid
        assert (await receive(systemd)).startswith("RELOADING=1\nMONOTONIC_USEC=")
        failed = "STATUS=serving 3 server(s); last reload failed (see the log)"
        assert (await receive(systemd)).split("\n") == ["READY=1", failed]
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


async def test_a_blocked_loop_sends_no_watchdog_pings(tmp_path: Path, systemd: socket.socket) -> None:
    """What makes WatchdogSec= useful: while a handler blocks the loop, systemd hears nothing."""
    sup = Supervisor(plan_from(tmp_path, CONFIG))
    env = {"NOTIFY_SOCKET": systemd.getsockname(), "WATCHDOG_USEC": "40000", "WATCHDOG_PID": str(os.getpid())}
    pings: list[float] = []  # arrival times, taken on a thread of our own: the loop's clock stops when it blocks
    enough = threading.Event()
    done = threading.Event()
    wanted = 0

    def listen() -> None:
        systemd.settimeout(0.05)
        while not done.is_set():
            try:
                data = systemd.recv(4096)
            except TimeoutError:
                continue
            if data == b"WATCHDOG=1":
                pings.append(time.monotonic())
                if len(pings) >= wanted:
                    enough.set()

    async def at_least(n: int) -> None:
        nonlocal wanted
        enough.clear()
        wanted = n
        if len(pings) < n:
            assert await asyncio.to_thread(enough.wait, DEADLINE)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        async with notify_view(sup.plan, sup, env):
            task = asyncio.create_task(sup.serve())
            await at_least(3)  # pinging every 20 ms
            blocked = time.monotonic()
            time.sleep(0.5)  # noqa: ASYNC251 - the point: a handler blocking the loop
            unblocked = time.monotonic()
            before = len(pings)
            await at_least(before + 3)  # and pinging again once the loop runs
            sup.request_stop("test")
            await task
    finally:
        done.set()
        listener.join(5)
    # a ping already under way as the block began may land just after it; none comes from inside it
    inside = [t for t in pings if blocked + 0.03 < t < unblocked]
    assert inside == [], f"{len(inside)} pings while the loop was blocked"


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
