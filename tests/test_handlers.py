"""The demo handlers shipped in the package, over real sockets: what the README says each one answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

from supervisor.plan import Plan
from tests.helpers import DEADLINE, ask, plan_from, port_of, running

DEMO = """
servers:
  - {name: echo, handler: "supervisor.handlers.echo:handle", port: 0}
  - {name: http, handler: "supervisor.handlers.http:make", port: 0, options: {body: "hi there\\n"}}
"""


def demo(tmp_path: Path) -> Plan:
    return plan_from(tmp_path, DEMO)


async def exchange(port: int, request: bytes) -> bytes:
    """Send ``request``, half-close, and read until the server closes the connection."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            writer.write_eof()
            await writer.drain()
            return await reader.read()
        finally:
            writer.close()


def head(status: str, length: int, *, close: bool = True) -> bytes:
    line = f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\n"
    return line.encode() + (b"Connection: close\r\n\r\n" if close else b"\r\n")


async def test_echo_returns_every_line(tmp_path: Path) -> None:
    async with running(demo(tmp_path)) as sup:
        assert await exchange(port_of(sup, "echo"), b"one\ntwo\n") == b"one\ntwo\n"
        assert await ask(port_of(sup, "echo"), b"three") == b"three\n"


async def test_http_get_and_head(tmp_path: Path) -> None:
    async with running(demo(tmp_path)) as sup:
        port = port_of(sup, "http")
        got = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert got == head("200 OK", 9) + b"hi there\n"
        headed = await exchange(port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert headed == head("200 OK", 9)  # the headers of a GET, no body
        keep = await exchange(port, b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n")  # 1.0 closes by default
        assert keep == head("200 OK", 9, close=False) + b"hi there\n" + head("200 OK", 9) + b"hi there\n"


async def test_http_errors(tmp_path: Path) -> None:
    async with running(demo(tmp_path)) as sup:
        port = port_of(sup, "http")
        close = b"Connection: close\r\n\r\n"
        assert await exchange(port, b"GET /nope HTTP/1.1\r\n" + close) == head("404 Not Found", 10) + b"not found\n"
        assert (
            await exchange(port, b"DELETE / HTTP/1.1\r\n" + close)
            == head("405 Method Not Allowed", 19) + b"method not allowed\n"
        )
        assert await exchange(port, b"GARBAGE\r\n\r\n") == head("400 Bad Request", 12) + b"bad request\n"
        assert (
            await exchange(port, b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
            == head("400 Bad Request", 33) + b"request bodies are not supported\n"
        )
        huge = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
        assert await exchange(port, huge) == head("431 Too Large", 18) + b"headers too large\n"
        past_limit = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 100_000  # no end of headers within the limit
        assert await exchange(port, past_limit) == head("431 Too Large", 18) + b"headers too large\n"


async def test_http_sleep_answers_after_the_delay(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    async with running(demo(tmp_path)) as sup:
        started = loop.time()
        answer = await exchange(port_of(sup, "http"), b"GET /sleep?s=0.2 HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert loop.time() - started >= 0.199  # uvloop: a millisecond clock
        assert answer == head("200 OK", 10) + b"slept 0.2\n"
