"""systemd's notify protocol (sd_notify), for ``Type=notify`` units. A read-only view of the tree.

* ``READY=1`` once every server is bound and serving (not merely when the process started);
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
from collections.abc import AsyncIterator, Mapping

from supervisor.plan import Plan
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
    while not supervisor.snapshot().shutting_down:
        await supervisor.changed()
    notifier.send("STOPPING=1", "STATUS=shutting down")


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.send("WATCHDOG=1")
        await asyncio.sleep(interval)
