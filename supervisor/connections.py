"""The live connections of one generation and their drain: a stream server's (which handler task serves which
reader and writer) and a protocol server's (:class:`ProtocolConnections`).

Why we track connections ourselves: ``Server.wait_closed()`` returns at once on 3.11 and uvloop, waits forever
for idle clients on 3.12+, and ``close_clients()`` exists only on 3.13 (not on uvloop).
"""

from __future__ import annotations

import asyncio
import contextlib
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


# A protocol connection's fields, kept on the protocol itself: the subclass supervised() makes adds them as slots
LINKS = ("_supervisor_next", "_supervisor_prev", "_supervisor_since", "_supervisor_transport")


class _Head:
    __slots__ = LINKS
    _supervisor_prev: Any
    _supervisor_next: Any


class Node:
    """A connection whose protocol cannot take our slots (a factory's instances, moved to a same-layout subclass):
    in ``nodes``, not linked. 48 B + the dict entry's 37 B + the float's 24 B (the dict's old tuple was 56 B)."""

    __slots__ = ("_supervisor_since", "_supervisor_transport")
    _supervisor_since: float
    _supervisor_transport: Any


class ProtocolConnections:
    """The live connections of one protocol generation, in accept order, and their drain.

    A doubly-linked list threaded through the protocols: four slots (prev, next, transport, accepted at) are 32 B
    per instance, plus the accepted-at float's 24 B, and nothing else: 56 B a connection (tracemalloc, 4,000).
    The dict protocol -> (transport, accepted at) it replaces cost 117 B (the tuple 56 + the float 24 + the dict
    entry 37): RSS per idle connection (bench_hotpath --idle 4000) went from 1.09x to 1.03x a bare Protocol
    server's on uvloop, 1.05-1.08x to 1.01-1.04x on asyncio.
    """

    def __init__(self, server: str, generation: int, stats: ServerStats) -> None:
        self._server = server
        self._generation = generation
        self._stats = stats
        self._head = head = _Head()  # the sentinel: its next is the oldest connection, its prev the newest
        head._supervisor_prev = head._supervisor_next = head
        self._count = 0
        self.nodes: dict[Any, Node] = {}  # protocol -> its Node, for those without our slots
        self.empty = asyncio.Event()
        self.empty.set()

    def __len__(self) -> int:
        return self._count

    def node(self, proto: asyncio.BaseProtocol) -> Node:
        """A new Node for a protocol that cannot take our slots."""
        node = self.nodes[proto] = Node()
        return node

    def forget(self, proto: asyncio.BaseProtocol) -> Node | None:
        return self.nodes.pop(proto, None)

    def add(self, node: Any, transport: asyncio.BaseTransport, now: float) -> None:
        node._supervisor_transport = transport
        node._supervisor_since = -now  # negative until its first byte (protocols.py flips it): still fresh
        if type(node) is not Node:  # the protocol itself: linked in last
            head = self._head
            node._supervisor_prev = last = head._supervisor_prev
            node._supervisor_next = head
            last._supervisor_next = head._supervisor_prev = node
        self._count += 1
        self.empty.clear()
        self._stats.active += 1
        self._stats.total += 1

    def remove(self, node: Any, now: float) -> None:
        if getattr(node, "_supervisor_transport", None) is None:
            return  # never added (refused at max_connections), or removed already
        node._supervisor_transport = None
        if type(node) is not Node:
            prev, after = node._supervisor_prev, node._supervisor_next
            prev._supervisor_next = after
            after._supervisor_prev = prev
            node._supervisor_prev = node._supervisor_next = None  # it keeps no other connection alive
        self._count -= 1
        self._stats.active -= 1
        self._stats.observe_duration(now - abs(node._supervisor_since))
        if not self._count:
            self.empty.set()

    @staticmethod
    def abort(node: Any) -> None:
        if (transport := getattr(node, "_supervisor_transport", None)) is not None:
            transport.abort()

    def live(self) -> list[tuple[asyncio.BaseProtocol, Any]]:
        """(protocol, node) of each live connection, oldest first (the node is the protocol itself, or its Node):
        a copy, safe while they close."""
        found: list[tuple[asyncio.BaseProtocol, Any]] = list(self.nodes.items())
        head = self._head
        node = head._supervisor_next
        while node is not head:
            found.append((node, node))
            node = node._supervisor_next
        return found

    def cancel_all(self) -> None:
        for _, node in self.live():
            self.abort(node)

    async def drain(self, budget: float, force: asyncio.Future[None], *, spare_fresh: bool = False) -> None:
        """Call each protocol's ``drain()`` (else close its transport); after ``budget`` (or ``force``) abort.

        At a restart (``spare_fresh``) a connection accepted less than FRESH_WINDOW ago that has not sent a byte
        yet (its first request is on the way: the stream kind's rule) gets ``drain()`` at the end of that window.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        fresh = []
        for proto, node in self.live():
            if spare_fresh and -node._supervisor_since > started - FRESH_WINDOW:
                fresh.append((proto, node))
            else:
                self._drain_one(proto, node)
        await until_empty(
            self.empty, force, budget, loop.call_later(FRESH_WINDOW, self._drain_all, fresh) if fresh else None
        )
        if self:
            why = "skipped (second stop request)" if force.done() else f"budget {budget:.1f}s used up"
            LOGGER.warning(
                "server %s: drain %s, aborting %d connection(s) of generation %d",
                self._server, why, len(self), self._generation,
            )  # fmt: skip
            self._stats.drain_cancelled += len(self)
            self.cancel_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.empty.wait(), CANCEL_GRACE)
        self._stats.last_drain_seconds = loop.time() - started

    def _drain_all(self, connections: list[tuple[asyncio.BaseProtocol, Any]]) -> None:
        for proto, node in connections:
            self._drain_one(proto, node)

    def _drain_one(self, proto: asyncio.BaseProtocol, node: Any) -> None:
        if (transport := node._supervisor_transport) is None:
            return  # gone meanwhile
        drain = getattr(proto, "drain", None)
        try:
            drain() if drain is not None else transport.close()
        except Exception as exc:  # the user's drain() failed: that connection is cut now
            LOGGER.warning("server %s: drain() raised; connection aborted", self._server, exc_info=True)
            self._stats.handler_failed(exc, asyncio.get_running_loop().time())
            transport.abort()
