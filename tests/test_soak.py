"""Bounded soaks: a thousand crash/restart cycles leave nothing behind (file descriptors, tasks, memory)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from pathlib import Path

import pytest

from supervisor.state import ChildState
from tests.helpers import ask, eventually, plan_from, port_of, running, wait_state

CYCLES = 1000


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.timeout(120)
async def test_a_thousand_crash_restart_cycles_leave_nothing_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, "supervisor")  # 3 lines per cycle would only measure the log capture
    plan = plan_from(
        tmp_path,
        """
        supervisor: {max_restarts: 100000, restart_window: 1s}
        servers:
          - {name: s, handler: "tests.apps:journaled", port: 0, on_handler_error: restart, backoff: {initial: 0}}
          - {name: neighbour, handler: "tests.apps:lines", port: 0}
        """,
    )
    async with running(plan) as sup:
        port = port_of(sup, "s")

        async def cycles(n: int, first: int) -> None:
            for generation in range(first + 1, first + n + 1):
                assert await ask(port, b"crash") == b""
                await wait_state(sup, "s", ChildState.RUNNING, generation=generation)

        await cycles(50, 1)  # warm up: caches, the first tracebacks, lazily created objects
        gc.collect()
        assert await ask(port_of(sup, "neighbour"), b"who") == b"neighbour#1\n"
        fds, tasks, rss = open_fds(), len(asyncio.all_tasks()), rss_kb()
        await cycles(CYCLES, 51)
        assert await ask(port, b"who") == f"s#{CYCLES + 51}\n".encode()
        gc.collect()
        # closing a transport takes a loop iteration or two: give the last ones up to a second
        with contextlib.suppress(TimeoutError):
            await eventually(lambda: (open_fds(), len(asyncio.all_tasks())) == (fds, tasks), timeout=1.0)
        after = open_fds(), len(asyncio.all_tasks()), rss_kb()
        assert await ask(port_of(sup, "neighbour"), b"who") == b"neighbour#1\n"  # undisturbed
        live = len(sup.children[0].live)
    assert after[0] == fds, f"file descriptors {fds} -> {after[0]}"
    assert after[1] == tasks, f"tasks {tasks} -> {after[1]}"
    assert after[2] - rss < 8 * 1024, f"RSS {rss} kB -> {after[2]} kB"
    assert live == 1
    print(f"\n{CYCLES} restarts: fds {fds} -> {after[0]}, tasks {tasks} -> {after[1]}, RSS {rss} -> {after[2]} kB")
