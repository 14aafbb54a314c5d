"""Handlers the tests configure by ``tests.apps:NAME``: each behaves in one known way on a known input."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from supervisor import StopServer, current_server
from supervisor.handler import Handler

# Events the tests can read: (server name, what happened) in order.
JOURNAL: list[tuple[str, str]] = []


async def lines(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Line protocol: ``crash`` raises, ``stop`` raises StopServer, ``sleep N`` answers after N s,
    ``work N`` answers ``working`` then ``done`` after N s, ``who`` names the generation, ``opt KEY`` answers an
    option, ``blurt N`` writes N bytes and ends the handler without draining them, ``stream N``/``spray N`` write
    N chunks of 64 KiB with and without drain(), ``bad`` raises from the handler's own code, ``block N`` blocks
    the loop for N s, else echo."""
    try:
        while line := await reader.readline():
            cmd, _, arg = line.strip().partition(b" ")
            if cmd == b"crash":
                raise RuntimeError("crash requested")
            if cmd == b"reset":  # what a client vanishing mid-write looks like to a handler
                raise ConnectionResetError("client went away")
            if cmd == b"stop":
                raise StopServer
            if cmd == b"work":  # says it started, so a test knows the request is in flight
                writer.write(b"working\n")
                await writer.drain()
                await asyncio.sleep(float(arg))
                writer.write(b"done\n")
            elif cmd == b"sleep":
                await asyncio.sleep(float(arg))
                writer.write(b"slept\n")
            elif cmd == b"nodelay":
                sock = writer.get_extra_info("socket")
                writer.write(b"%d\n" % bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
            elif cmd == b"block":  # blocking code on the event loop: the mistake the loop guard reports
                time.sleep(float(arg))  # noqa: ASYNC251 - on purpose
                writer.write(b"unblocked\n")
            elif cmd == b"misuse":  # a wrong call into the stream API: the handler's bug, raised inside the reader
                await reader.readexactly(-1)
            elif cmd == b"sprayl":  # like spray, with writelines()
                for _ in range(int(arg)):
                    writer.writelines([b"y" * 32768, b"y" * 32768])
                    await asyncio.sleep(0)
            elif cmd == b"bad":  # the handler's own bug, raised from its own code
                raise ValueError("handler bug")
            elif cmd in (b"stream", b"spray"):  # N chunks of 64 KiB, awaiting drain() after each, or never
                for _ in range(int(arg)):
                    writer.write(b"y" * 65536)
                    if cmd == b"stream":
                        await writer.drain()
                    else:
                        await asyncio.sleep(0)
            elif cmd == b"blurt":  # N bytes written without waiting for the client to read them, then done
                writer.write(b"x" * int(arg))
                return
            elif cmd == b"who":
                ctx = current_server()
                writer.write(f"{ctx.name}#{ctx.generation}\n".encode())
            elif cmd == b"opt":  # the value of one option of the generation serving this connection
                writer.write(f"{current_server().options.get(arg.decode())}\n".encode())
            else:
                writer.write(line)
            await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def journaled(options: Mapping[str, Any]) -> AsyncIterator[Handler]:
    """A lifespan that records enter/exit per server, optionally failing on enter or in the background."""
    name = current_server().name
    JOURNAL.append((name, "enter"))
    if options.get("fail_enter"):
        raise RuntimeError("lifespan enter failed")
    if options.get("stop_enter"):
        raise StopServer
    async with asyncio.TaskGroup() as tg:
        if (delay := options.get("background_fails_after")) is not None:
            tg.create_task(_fail_after(float(delay)))
        if options.get("tripwire"):
            tg.create_task(_fail_when(TRIPS.setdefault(name, asyncio.Event())))
        try:
            yield lines
        finally:
            JOURNAL.append((name, "exit"))
    if options.get("fail_exit"):
        raise RuntimeError("lifespan exit failed")


# Lifespans of ``gated`` servers wait here until a test opens their gate: a start that takes a while.
GATES: dict[str, asyncio.Event] = {}


@contextlib.asynccontextmanager
async def gated(options: Mapping[str, Any]) -> AsyncIterator[Handler]:
    """Generations from ``from_generation`` on (default: every one) wait for the server's gate to open;
    generation ``fail_generation`` then fails to start."""
    ctx = current_server()
    if ctx.generation >= int(options.get("from_generation", 1)):
        await GATES.setdefault(ctx.name, asyncio.Event()).wait()
    if ctx.generation == options.get("fail_generation"):
        raise RuntimeError(f"generation {ctx.generation} failed to start")
    yield lines


async def framed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``LEN n`` then n bytes: answers ``go`` after the header and echoes the body (read with readexactly)."""
    while header := await reader.readline():
        writer.write(b"go\n")
        await writer.drain()
        body = await reader.readexactly(int(header.split()[1]))
        writer.write(body + b"\n")
        await writer.drain()
    writer.close()


# Lifespans with ``tripwire: true`` fail (from a background task) when a test sets their event.
TRIPS: dict[str, asyncio.Event] = {}


async def _fail_when(tripped: asyncio.Event) -> None:
    draining = asyncio.ensure_future(current_server().draining.wait())  # ends with its generation
    trip = asyncio.ensure_future(tripped.wait())
    try:
        await asyncio.wait((draining, trip), return_when=asyncio.FIRST_COMPLETED)
    finally:
        draining.cancel()
        trip.cancel()
    if tripped.is_set():
        tripped.clear()
        raise RuntimeError("tripwire")


async def _fail_after(delay: float) -> None:
    await asyncio.sleep(delay)
    raise RuntimeError("background task failed")


async def stubborn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Ignores end-of-stream and keeps the connection until cancelled: only the drain budget ends it."""
    writer.write(b"hi\n")
    await writer.drain()
    with contextlib.suppress(ConnectionError):
        await reader.read()
    await asyncio.sleep(3600)


async def immortal(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A handler that swallows every cancellation: only leaving the process ends it."""
    writer.write(b"hi\n")
    await writer.drain()
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # the point of this handler
            continue


@contextlib.asynccontextmanager
async def sluggish(options: Mapping[str, Any]) -> AsyncIterator[Handler]:
    """A lifespan that takes ``enter`` seconds to start and ``exit`` seconds to stop (ignoring draining)."""
    await asyncio.sleep(float(options.get("enter", 0)))
    try:
        yield lines
    finally:
        await asyncio.sleep(float(options.get("exit", 0)))


async def until_newline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo with readuntil(), letting its IncompleteReadError at end-of-stream escape (as handlers often do)."""
    while True:
        writer.write(await reader.readuntil(b"\n"))
        await writer.drain()


_SUBSCRIBERS: list[asyncio.StreamWriter] = []


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``sub``: become a subscriber; ``pub N``: send N x 64 KiB to every subscriber, awaiting each one's drain()."""
    line = await reader.readline()
    if line == b"sub\n":
        _SUBSCRIBERS.append(writer)
        writer.write(b"subscribed\n")
        await writer.drain()
        await reader.read()
        return
    if line.startswith(b"pub "):
        for _ in range(int(line.split()[1])):
            for sub in list(_SUBSCRIBERS):
                sub.write(b"m" * 65536)
                await sub.drain()  # raises for a subscriber that reset: inside *its* writer, not ours
    writer.close()
