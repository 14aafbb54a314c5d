"""The live connections of one stream generation (which handler task serves which reader and writer) and their
drain; :func:`until_empty`, the wait both kinds' drains share (a protocol server's: protocol_connections.py).

Why we track connections ourselves: ``Server.wait_closed()`` returns at once on 3.11 and uvloop, waits forever
for idle clients on 3.12+, and ``close_clients()`` exists only on 3.13 (not on uvloop).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from supervisor.state import ServerStats
from supervisor.streams import FRESH_WINDOW, Reader

LOGGER = logging.getLogger("supervisor")

# After cancelling leftover handlers, how long they may take to unwind before we abandon them.
CANCEL_GRACE = 1.0


class Connections:
    def __init__(self, server: str, generation: int, stats: ServerStats) -> None:
        self._server = server
        self._generation = generation
        self._stats = stats
        self._by_task: dict[asyncio.Task[Any], tuple[Reader, asyncio.StreamWriter]] = {}
        self.empty = asyncio.Event()
        self.empty.set()
        self.cancelling = False  # set once we cancel them: their handlers' CancelledError is ours, not a bug

    def __len__(self) -> int:
        return len(self._by_task)

    def add(self, task: asyncio.Task[Any], reader: Reader, writer: asyncio.StreamWriter) -> None:
        self._by_task[task] = (reader, writer)
        self.empty.clear()

    def get(self, task: asyncio.Task[Any]) -> tuple[Reader, asyncio.StreamWriter]:
        return self._by_task[task]

    def remove(self, task: asyncio.Task[Any]) -> None:
        del self._by_task[task]
        if not self._by_task:
            self.empty.set()

    def tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._by_task)

    def end_idle(self) -> None:
        """Every connection waiting between messages reads end-of-stream now."""
        for reader, _ in self._by_task.values():
            reader.eof_if_idle()

    def cancel_all(self) -> None:
        self.cancelling = True
        for task, (_, writer) in list(self._by_task.items()):
            task.cancel()
            writer.transport.abort()

    async def drain(self, budget: float, force: asyncio.Future[None], *, spare_fresh: bool) -> None:
        """Idle connections read EOF; busy ones get ``budget`` seconds (cut by ``force``); the rest are cancelled.

        At a restart (``spare_fresh``) a connection just accepted is given FRESH_WINDOW to send its first request,
        then looked at again.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.end_idle()
        await until_empty(
            self.empty, force, budget, loop.call_later(FRESH_WINDOW, self.end_idle) if spare_fresh else None
        )
        if self:
            why = "skipped (second stop request)" if force.done() else f"budget {budget:.1f}s used up"
            LOGGER.warning(
                "server %s: drain %s, cancelling %d connection(s) of generation %d: %s",
                self._server, why, len(self), self._generation, self.peers(),
            )  # fmt: skip
            self._stats.drain_cancelled += len(self)
            tasks = self.tasks()
            self.cancel_all()
            await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        self._stats.last_drain_seconds = loop.time() - started

    def peers(self, shown: int = 5) -> str:
        """The first few peers, for a log line: ``127.0.0.1:5001, 127.0.0.1:5002 and 3 more``."""
        writers = [w for _, w in self._by_task.values()]
        names = ", ".join(_peer(w) for w in writers[:shown])
        return f"{names} and {len(writers) - shown} more" if len(writers) > shown else names


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)


async def until_empty(
    empty: asyncio.Event, force: asyncio.Future[None], budget: float, recheck: asyncio.TimerHandle | None = None
) -> None:
    """Wait until ``empty`` is set, ``force`` is done (a second stop request) or ``budget`` seconds passed; then
    cancel ``recheck`` (a drain's look at its fresh connections), whichever way the wait ended."""
    try:
        if not empty.is_set() and not force.done():
            waiter = asyncio.ensure_future(empty.wait())
            try:
                await asyncio.wait((waiter, force), timeout=budget, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
    finally:
        if recheck is not None:
            recheck.cancel()
