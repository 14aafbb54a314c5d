"""What a worker process and its parent say to each other (``supervisor.workers: N``): one JSON object per line
on a unix socket pair, and how the tree's statuses and counters cross it.

worker -> parent: ``state`` (its snapshot's servers, their counters, its loop lag; sent on every change and every
STATE_INTERVAL), ``result`` (the answer to a command), ``problems`` (its config did not load: it exits 2).
parent -> worker: ``config`` (the file's text and path, first), ``command`` (restart, stop, start NAME).
Both ends are this package, so nothing here guards against a hostile peer beyond a bounded line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
from collections import Counter
from collections.abc import Awaitable
from typing import Any

from supervisor.commands import Result
from supervisor.state import ChildState, ChildStatus, ServerStats

STATE_INTERVAL = 0.5  # seconds between a worker's state messages when nothing changed: /metrics is this fresh
LINE_LIMIT = 64 << 20  # one state message of a 1,000-server tree is ~0.5 MB
_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(ServerStats))
_COUNTERS = ("restarts", "client_errors")
_GAUGES = frozenset({"active", "parked", "last_drain_seconds"})  # not summed into a dead worker's totals


def stats_to_wire(stats: ServerStats) -> dict[str, Any]:
    return {name: getattr(stats, name) for name in _STATS_FIELDS}


def stats_from_wire(data: dict[str, Any]) -> ServerStats:
    fields = {name: data[name] for name in _STATS_FIELDS if name in data}
    for name in _COUNTERS:
        fields[name] = Counter(fields.get(name, {}))
    return ServerStats(**fields)


def add_stats(into: ServerStats, other: ServerStats, *, gauges: bool = True) -> None:
    """Add ``other``'s counters to ``into`` (and its gauges, unless ``other`` is a dead worker's last report)."""
    for name in ("total", "handler_errors", "drain_cancelled", "rejected", "accept_errors", "tls_handshakes"):
        setattr(into, name, getattr(into, name) + getattr(other, name))
    into.restarts.update(other.restarts)
    into.client_errors.update(other.client_errors)
    into.duration_counts = [a + b for a, b in zip(into.duration_counts, other.duration_counts, strict=True)]
    into.duration_sum += other.duration_sum
    if other.last_handler_error_at > into.last_handler_error_at:  # the newest, whichever worker saw it
        into.last_handler_error, into.last_handler_error_at = other.last_handler_error, other.last_handler_error_at
    if gauges:
        into.active += other.active
        into.parked += other.parked
        into.last_drain_seconds = max(into.last_drain_seconds, other.last_drain_seconds)


def child_to_wire(status: ChildStatus) -> dict[str, Any]:
    return {f.name: getattr(status, f.name) for f in dataclasses.fields(ChildStatus)}


def child_from_wire(data: dict[str, Any]) -> ChildStatus:
    return ChildStatus(**{**data, "state": ChildState(data["state"])})


def result_to_wire(result: Result) -> dict[str, Any]:
    return {"ok": result.ok, "text": result.text, "invalid": result.invalid}


def result_from_wire(data: dict[str, Any]) -> Result:
    return Result(bool(data["ok"]), str(data["text"]), bool(data.get("invalid", False)))


async def within(awaitable: Awaitable[object], timeout: float) -> bool:
    """True if ``awaitable`` finished within ``timeout`` seconds (else it is cancelled; shield a future you keep).

    Not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives as the awaited thing completes (CPython
    gh-86296, fixed by 3.12's rewrite) -- seen here as a worker that never exited: its report loop, cancelled at
    the end of its shutdown just as the shutdown published a change, went on waiting, and so did the view.
    """
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait([task], timeout=timeout)
    finally:
        if not task.done():
            task.cancel()
    return bool(done)


class Channel:
    """One end of the pair: send() queues a line (never waits), receive() reads the next message or None at EOF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    def send(self, message: dict[str, Any]) -> None:
        if not self._writer.is_closing():
            self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def flush(self) -> None:
        if not self._writer.is_closing():
            await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        try:
            line = await self._reader.readline()
            message = json.loads(line) if line.endswith(b"\n") else None
        except (ConnectionError, ValueError):  # reset, a line over LINE_LIMIT, not JSON
            return None
        return message if isinstance(message, dict) else None

    def close(self) -> None:
        self._writer.close()


def read_first(sock: socket.socket) -> dict[str, Any]:
    """The parent's first message, read before the worker's loop exists (blocking)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise EOFError("the parent closed the channel before sending the config")
        data += chunk
    message: dict[str, Any] = json.loads(data)
    return message
