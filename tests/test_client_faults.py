"""Nothing a client sends, or how it leaves, is a server failure: over-long lines, resets mid-response, bodies cut
short, silence, never reading, floods. Each case: the connection is closed and counted with its reason, at most a
line is logged, and the server -- and its neighbour -- keep serving the same generation."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from pathlib import Path

import pytest

from supervisor import Supervisor
from supervisor.plan import Plan
from tests import apps
from tests.helpers import DEADLINE, ask, eventually, plan_from, port_of, running

MARGIN = 0.3  # past a timeout, how late the close may come on a busy machine


def plan(tmp_path: Path, extra: str = "", handler: str = "tests.apps:lines", max_restarts: int = 0) -> Plan:
    return plan_from(
        tmp_path,
        f"""
        supervisor: {{max_restarts: {max_restarts}}}
        servers:
          - {{name: s, handler: "{handler}", port: 0, on_handler_error: restart{extra}}}
          - {{name: neighbour, handler: "tests.apps:lines", port: 0}}
        """,
    )


async def undisturbed(sup: Supervisor) -> None:
    """Both servers still serve their first generation, and nothing counted as a handler error."""
    assert await ask(port_of(sup, "neighbour"), b"who") == b"neighbour#1\n"
    if (s := sup.snapshot().child("s")) is not None and s.state.value == "running":
        assert await ask(port_of(sup, "s"), b"who") == b"s#1\n"
    assert [c.stats.handler_errors for c in sup.children] == [0, 0]
    assert [c.restarts for c in sup.children] == [0, 0]


def loud(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_over_long_lines_never_restart_or_give_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The reported attack: four lines over the StreamReader limit made the supervisor give up (exit 1)."""
    async with running(plan(tmp_path)) as sup:
        for _ in range(10):
            assert await ask(port_of(sup, "s"), b"x" * 70_000) == b""  # closed, nothing else
        await undisturbed(sup)
        assert sup.children[0].stats.client_errors["too_long"] == 10
    assert loud(caplog) == []


async def test_read_limit_is_the_longest_line(tmp_path: Path) -> None:
    async with running(plan(tmp_path, ", read_limit: 1KiB")) as sup:
        assert await ask(port_of(sup, "s"), b"a" * 900) == b"a" * 900 + b"\n"
        assert await ask(port_of(sup, "s"), b"a" * 3000) == b""
        assert sup.children[0].stats.client_errors["too_long"] == 1
        await undisturbed(sup)


async def test_a_reset_in_the_middle_of_a_response(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(plan(tmp_path)) as sup:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "s"))
            writer.write(b"stream 1000\n")  # 64 MB, flushed with drain()
            assert await reader.readexactly(65536) == b"y" * 65536  # the response has started
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # RST
        await eventually(lambda: sup.children[0].stats.active == 0)
        assert sup.children[0].stats.client_errors["reset"] == 3
        await undisturbed(sup)
    assert loud(caplog) == []


async def test_a_body_cut_short(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(plan(tmp_path, handler="tests.apps:framed")) as sup:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "s"))
        writer.write(b"LEN 10\n")
        assert await reader.readline() == b"go\n"
        writer.write(b"abc")
        writer.write_eof()  # the client promised 10 bytes and sent 3
        assert await reader.read() == b""
        writer.close()
        assert await ask(port_of(sup, "neighbour"), b"who") == b"neighbour#1\n"
        stats = sup.children[0].stats
        assert (stats.client_errors["incomplete"], stats.handler_errors, sup.children[0].restarts) == (1, 0, 0)
    assert loud(caplog) == []


async def test_the_handlers_own_errors_are_still_failures(tmp_path: Path) -> None:
    """The rule is where an error was raised: a ValueError from the handler's code restarts the server."""
    async with running(plan(tmp_path, max_restarts=5)) as sup:
        assert await ask(port_of(sup, "s"), b"bad") == b""
        async with asyncio.timeout(DEADLINE):
            while sup.children[0].generation < 2 or sup.snapshot().child("s").state.value != "running":  # type: ignore[union-attr]
                await sup.changed()
        assert sup.children[0].stats.handler_errors == 1
        assert sup.snapshot().child("s").last_error == "ValueError: handler bug"  # type: ignore[union-attr]


async def test_idle_timeout_ends_silent_clients_and_slowloris(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    async with running(plan(tmp_path, ", idle_timeout: 300ms")) as sup:
        port = port_of(sup, "s")
        quiet_r, quiet_w = await asyncio.open_connection("127.0.0.1", port)  # connects, sends nothing
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        chatty_r, chatty_w = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        slow_w.write(b"GET / HT")  # half a line, then silence: a slowloris
        for _ in range(5):  # a client that keeps talking is never idle
            chatty_w.write(b"ping\n")
            assert await chatty_r.readline() == b"ping\n"
            await asyncio.sleep(0.1)  # the client's own pace, not a wait for the server
        async with asyncio.timeout(DEADLINE):
            assert await quiet_r.read() == b""  # between messages: a clean end-of-stream
            assert await slow_r.read() == b""  # mid-line: IdleTimeout raised into the read, then closed
        ended = loop.time() - started
        assert 0.3 <= ended < 0.3 + MARGIN
        chatty_w.write(b"who\n")
        assert await chatty_r.readline() == b"s#1\n"
        assert sup.children[0].stats.client_errors["idle_timeout"] == 2
        await undisturbed(sup)
        for w in (quiet_w, slow_w, chatty_w):
            w.close()
    assert loud(caplog) == []


async def test_max_write_buffer_closes_a_client_that_never_reads(tmp_path: Path) -> None:
    async with running(plan(tmp_path, ", max_write_buffer: 1MiB")) as sup:
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "s"))
        writer.transport.pause_reading()  # type: ignore[attr-defined]  # this client reads nothing
        writer.write(b"spray 2000\n")  # 128 MB, written without awaiting drain()
        await eventually(lambda: sup.children[0].stats.client_errors["write_buffer"] == 1)
        assert sup.children[0].stats.active == 0  # the handler ended with the connection
        writer.transport.abort()
        await undisturbed(sup)


async def test_max_connections_closes_the_excess(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running(plan(tmp_path, ", max_connections: 3")) as sup:
        port = port_of(sup, "s")
        kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        for reader, writer in kept:  # all three are being served
            writer.write(b"who\n")
            assert await reader.readline() == b"s#1\n"
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            async with asyncio.timeout(DEADLINE):
                assert await reader.read() == b""  # accepted and closed at once
            writer.close()
        stats = sup.children[0].stats
        assert (stats.active, stats.rejected) == (3, 20)
        kept.pop()[1].close()
        await eventually(lambda: stats.active == 2)
        assert await ask(port, b"who") == b"s#1\n"  # a slot freed: served again
        for _, writer in kept:
            writer.close()
        await undisturbed(sup)
    rejected = [m for m in loud(caplog) if "max_connections (3) reached" in m]
    assert rejected == ["server s: max_connections (3) reached, closing new connections"]  # one line, not 20


async def test_idle_timeout_does_not_count_the_handlers_own_time(tmp_path: Path) -> None:
    """Found in review: a handler busy for longer than idle_timeout lost its answer, counted as the client's."""
    async with running(plan(tmp_path, ", idle_timeout: 300ms")) as sup:
        assert await ask(port_of(sup, "s"), b"sleep 0.6") == b"slept\n"
        assert sup.children[0].stats.client_errors["idle_timeout"] == 0


@pytest.mark.parametrize("cmd", [b"spray 2000", b"sprayl 2000"], ids=["write", "writelines"])
async def test_max_write_buffer_below_the_high_water_mark_and_with_writelines(tmp_path: Path, cmd: bytes) -> None:
    async with running(plan(tmp_path, ", max_write_buffer: 16KiB")) as sup:
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "s"))
        try:
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            writer.write(cmd + b"\n")
            await eventually(lambda: sup.children[0].stats.client_errors["write_buffer"] == 1)
        finally:
            writer.transport.abort()
        await undisturbed(sup)


async def test_a_wrong_call_into_the_stream_api_is_the_handlers_error(tmp_path: Path) -> None:
    async with running(plan(tmp_path, max_restarts=5)) as sup:
        assert await ask(port_of(sup, "s"), b"misuse") == b""
        await eventually(lambda: sup.children[0].stats.handler_errors == 1)
        assert sup.children[0].stats.client_errors == {}


async def test_a_reset_of_another_connection_is_not_the_handlers_failure(tmp_path: Path) -> None:
    """A chat-like broadcaster writing to a member that reset: a peer's doing, wherever it is raised."""
    apps._SUBSCRIBERS.clear()
    async with running(plan(tmp_path, handler="tests.apps:relay")) as sup:
        port = port_of(sup, "s")
        sub_r, sub_w = await asyncio.open_connection("127.0.0.1", port)
        sub_w.write(b"sub\n")
        assert await sub_r.readline() == b"subscribed\n"
        sock = sub_w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sub_w.transport.abort()  # RST
        pub_r, pub_w = await asyncio.open_connection("127.0.0.1", port)
        pub_w.write(b"pub 2000\n")  # 2000 x 64 KiB to the gone subscriber, awaiting its drain()
        async with asyncio.timeout(DEADLINE):
            assert await pub_r.read() == b""
        pub_w.close()
        await eventually(lambda: sup.children[0].stats.client_errors["reset"] >= 1)
        assert [c.stats.handler_errors for c in sup.children] == [0, 0]
        assert [c.generation for c in sup.children] == [1, 1]


async def test_the_drains_end_of_stream_is_nobodys_error(tmp_path: Path) -> None:
    """Found in review: idle clients of a handler that lets readuntil()'s IncompleteReadError escape were
    counted as client errors at every restart."""
    async with running(plan(tmp_path, handler="tests.apps:until_newline")) as sup:
        port = port_of(sup, "s")
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for reader, writer in clients:
            writer.write(b"hi\n")
            assert await reader.readline() == b"hi\n"
        await sup.control("restart", "s")
        for reader, writer in clients:
            assert await reader.read() == b""
            writer.close()
        stats = sup.children[0].stats
        assert (stats.client_errors, stats.handler_errors) == ({}, 0)
