"""systemd's notify protocol (sd_notify), for ``Type=notify`` units. A read-only view of the tree.

* ``READY=1`` once every server is bound and serving (not merely when the process started);
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a reload begins, and ``READY=1`` with a one-line ``STATUS=`` once
  it is done (applied or not: the supervisor serves either way);
* ``STOPPING=1`` when the ordered shutdown begins;
* ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` while the event loop runs: pings come from the loop itself,
  so a loop blocked by a handler stops them and systemd restarts the unit (``WatchdogSec=``).

Without ``NOTIFY_SOCKET`` in the environment this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Mapping

from supervisor.plan import Plan
from supervisor.state import TreeSnapshot
from supervisor.tree import TreeView

LOGGER = logging.getLogger("supervisor")


class Notifier:
    """Sends datagrams to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace)."""

    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    def send(self, *fields: str) -> bool:
        try:
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:  # systemd gone or socket full: never take the servers down for this
            LOGGER.warning("sd_notify to %s failed: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def close(self) -> None:
        self._sock.close()


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd asked for none (or for another pid)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


@contextlib.asynccontextmanager
async def notify_view(plan: Plan, supervisor: TreeView, env: Mapping[str, str] = os.environ) -> AsyncIterator[None]:
    address = env.get("NOTIFY_SOCKET")
    if not address:
        yield
        return
    notifier = Notifier(address)
    tasks = [asyncio.create_task(_lifecycle(notifier, supervisor), name="sd_notify")]
    if (interval := watchdog_interval(env)) is not None:
        tasks.append(asyncio.create_task(_watchdog(notifier, interval), name="sd_notify:watchdog"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        notifier.close()


async def _lifecycle(notifier: Notifier, supervisor: TreeView) -> None:
    try:
        addresses = await asyncio.shield(supervisor.ready)
    except asyncio.CancelledError:
        if supervisor.ready.cancelled():
            return  # stopped before it was ever ready: nothing to announce
        raise
    notifier.send("READY=1", f"STATUS=serving {len(addresses)} server(s)", f"MAINPID={os.getpid()}")
    LOGGER.info("sd_notify: READY=1 sent")
    announced = False  # RELOADING=1 sent for the reload under way
    finished = _reloads(supervisor.snapshot())
    while not (snap := supervisor.snapshot()).shutting_down:
        # systemd (Type=notify-reload) waits for RELOADING=1 and then READY=1 after its SIGHUP: send both for
        # every reload, even one that began and ended (an invalid file) between two snapshots seen here
        if (snap.config.reloading or _reloads(snap) > finished) and not announced:
            usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            notifier.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config")
            announced = True
        if _reloads(snap) > finished:
            finished, announced = _reloads(snap), snap.config.reloading
            outcome = "applied" if snap.config.last_reload_ok else "failed (see the log)"
            notifier.send("READY=1", f"STATUS=serving {len(snap.children)} server(s); last reload {outcome}")
        await supervisor.changed()
    notifier.send("STOPPING=1", "STATUS=shutting down")


def _reloads(snap: TreeSnapshot) -> int:
    return sum(n for _, n in snap.config.reloads)


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)
