"""The demo handlers shipped in the package, over real sockets: what the README says each one answers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from supervisor import streams
from supervisor.handlers.chat import GOODBYE
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


async def ended(reader: asyncio.StreamReader) -> bool:
    """The server closed the connection: end-of-stream, or a reset when a byte of ours was still unread there."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


async def test_http_closes_slowloris_and_idle_keep_alive(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: http, handler: "supervisor.handlers.http:make", port: 0, options: {header_timeout: 300ms}}
        """,
    )
    loop = asyncio.get_running_loop()
    async with running(plan) as sup:
        port = port_of(sup, "http")
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        for byte in b"GET / HTTP/1.1\r\n":  # one byte at a time, never finishing the head
            if slow_r.at_eof():
                break
            try:
                slow_w.write(bytes([byte]))
                await slow_w.drain()
            except (ConnectionError, RuntimeError):  # closed by the server meanwhile (uvloop: RuntimeError)
                break
            await asyncio.sleep(0.05)  # the attacker's own pace
        try:
            async with asyncio.timeout(DEADLINE):
                assert await ended(slow_r)
                assert await ended(idle_r)
            assert 0.3 <= loop.time() - started < 0.3 + 0.5
        finally:  # a failure here must not leak the transports into the next test's loop (uvloop: EBUSY)
            slow_w.close()
            idle_w.close()
        assert await exchange(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n") == head("200 OK", 6) + b"hello\n"


async def test_chat_disconnects_a_member_that_never_reads(tmp_path: Path) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: chat, handler: "supervisor.handlers.chat:room", port: 0, options: {max_backlog: 65536}}
        """,
    )
    async with running(plan) as sup:
        port = port_of(sup, "chat")
        deaf_r, deaf_w = await asyncio.open_connection("127.0.0.1", port)
        assert await deaf_r.readline() == b"welcome to the chat\n"
        deaf_w.transport.pause_reading()  # type: ignore[attr-defined]  # never reads again
        talk_r, talk_w = await asyncio.open_connection("127.0.0.1", port)
        assert await talk_r.readline() == b"welcome to the chat\n"
        line = b"z" * 1000 + b"\n"
        async with asyncio.timeout(DEADLINE):
            for _ in range(20_000):  # 20 MB at most: what the room would otherwise buffer for the deaf member
                talk_w.write(line)
                await talk_w.drain()
                if sup.children[0].stats.active == 1:
                    break
        assert sup.children[0].stats.active == 1  # the deaf member was disconnected, the talker stays
        deaf_w.close()
        talk_w.write(b"still here\n")
        await talk_w.drain()
        talk_w.close()
        assert await ask(port, b"x") == b"welcome to the chat\n"


async def test_a_listen_only_chat_member_is_told_goodbye_at_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reported: a member that never sent a byte was kept on the old generation until the drain budget ran out,
    then cut without a goodbye, missing what the new generation broadcast. "Just connected" is now by age."""
    monkeypatch.setattr(streams, "FRESH_WINDOW", 0.1)
    plan = plan_from(
        tmp_path,
        """
        servers: [{name: chat, handler: "supervisor.handlers.chat:room", port: 0, shutdown_timeout: 20s}]
        """,
    )
    loop = asyncio.get_running_loop()
    async with running(plan) as sup:
        port = port_of(sup, "chat")
        listener_r, listener_w = await asyncio.open_connection("127.0.0.1", port)
        assert await listener_r.readline() == b"welcome to the chat\n"
        await asyncio.sleep(0.15)  # older than the fresh window: the member has been here a while
        started = loop.time()
        await sup.control("restart", "chat")
        async with asyncio.timeout(DEADLINE):
            assert await listener_r.readline() == GOODBYE
            assert await listener_r.read() == b""
        assert loop.time() - started < 1.0  # not the 20 s budget
        listener_w.close()
        assert await ask(port, b"") == b"welcome to the chat\n"  # back, on the new generation
