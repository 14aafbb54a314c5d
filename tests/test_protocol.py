"""``kind: protocol`` over real sockets on both loops: served, counted, its callbacks' errors classified under
``on_handler_error``, connections parked through a restart gap, the drain contract, and the config's errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trustme

from supervisor import current_server, protocol_idle
from supervisor.errors import ConfigError
from supervisor.state import ChildState
from tests.e2e_util import write_config
from tests.helpers import DEADLINE, eventually, plan_from, port_of, running, wait_state
from tests.proc import SupervisorProcess
from tests.test_listeners import client_context, server_files

GATE: dict[str, asyncio.Event] = {}
DRAINED: list[int] = []


class Echo(asyncio.Protocol):
    """Echoes; ``boom`` raises from data_received; answers ``who`` with the generation its factory saw
    (callbacks run in the loop's own callbacks: current_server() is for the factory and lifespan)."""

    generation = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"boom"):
            raise RuntimeError("boom requested")
        if data.startswith(b"deny"):  # an OSError of the handler's own (not the socket's)
            raise PermissionError("denied by the handler")
        if data.startswith(b"who"):
            self.transport.write(b"gen %d\n" % self.generation)
            return
        if data.startswith(b"hold"):  # its drain waits for GATE['hold']: the generation stays draining
            self.holding = True
        self.transport.write(data)

    def drain(self) -> None:
        DRAINED.append(1)
        if getattr(self, "holding", False):
            gate = GATE.setdefault("hold", asyncio.Event())
            asyncio.get_running_loop().create_task(gate.wait()).add_done_callback(lambda _: self.transport.close())
            return
        self.transport.close()


@contextlib.asynccontextmanager
async def gated(options: Mapping[str, Any]) -> AsyncIterator[Callable[[], asyncio.Protocol]]:
    """Generation 2 and later wait at GATE['g'] before serving: a restart gap held open."""
    if current_server().generation >= 2:
        await GATE.setdefault("g", asyncio.Event()).wait()
    yield make_echo(options)


def make_echo(options: Mapping[str, Any]) -> type[Echo]:
    return type("Echo", (Echo,), {"generation": current_server().generation})


class Slotted(asyncio.Protocol):
    """No ``__dict__``, made by a factory function: moved to a same-layout subclass, tracked by a Node each."""

    __slots__ = ("transport",)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def drain(self) -> None:
        DRAINED.append(1)
        self.transport.close()


class Spawner(asyncio.Protocol):
    """Fails outside data_received: ``tick`` in a timer it sets, ``task`` in a task it starts, ``flood`` in
    pause_writing (a 1-byte high-water mark, then a big write), ``resume`` in resume_writing (the same write,
    read by the client)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.fails_in = ""

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        if data.startswith(b"tick"):
            loop.call_later(0.01, self.tick)
        elif data.startswith(b"task"):
            loop.create_task(self.work())  # noqa: RUF006 - no reference kept: its error is reported when collected
        elif data.startswith((b"flood", b"resume")):
            self.fails_in = "pause" if data.startswith(b"flood") else "resume"
            self.transport.set_write_buffer_limits(high=1)
            self.transport.write(b"x" * 4_000_000)

    def tick(self) -> None:
        raise LookupError("failed in a timer")

    async def work(self) -> None:
        raise ArithmeticError("failed in a task")

    def pause_writing(self) -> None:
        if self.fails_in == "pause":
            raise BufferError("failed in pause_writing")

    def resume_writing(self) -> None:
        if self.fails_in == "resume":
            raise MemoryError("failed in resume_writing")


def make_spawner(options: Mapping[str, Any]) -> type[Spawner]:
    return Spawner


def make_instances(options: Mapping[str, Any]) -> Callable[[], asyncio.Protocol]:
    return lambda: Slotted()


class Patient(asyncio.Protocol):
    """``slow``: answers 0.6 s later, reading paused meanwhile; ``get N``: sends N MiB in one write."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"slow"):
            self.transport.pause_reading()  # busy with it: the client's silence meanwhile is the server's time
            asyncio.get_running_loop().call_later(0.6, self.answer)
        elif data.startswith(b"get"):
            self.transport.write(b"x" * (int(data.split()[1]) << 20))

    def answer(self) -> None:
        self.transport.write(b"done\n")
        self.transport.resume_reading()


class Buffered(asyncio.BufferedProtocol):
    """An echo that reads into its own buffer: its reads are buffer_updated, there is no data_received."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = bytearray(4096)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.buffer[:nbytes].startswith(b"boom"):
            raise RuntimeError("boom requested")
        self.transport.write(bytes(self.buffer[:nbytes]))


def make_patient(options: Mapping[str, Any]) -> type[Patient]:
    return Patient


def make_buffered(options: Mapping[str, Any]) -> type[Buffered]:
    return Buffered


@contextlib.asynccontextmanager
async def gated_buffered(options: Mapping[str, Any]) -> AsyncIterator[type[Buffered]]:
    """As :func:`gated`, for the BufferedProtocol."""
    if current_server().generation >= 2:
        await GATE.setdefault("g", asyncio.Event()).wait()
    yield Buffered


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    GATE.clear()
    DRAINED.clear()
    yield
    for gate in GATE.values():
        gate.set()


async def talk(port: int, line: bytes) -> bytes:
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(line)
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()


HTTP = """
servers:
  - {name: web, kind: protocol, handler: "supervisor.handlers.http_protocol:make", port: 0, options: {body: "hi\\n"}}
"""


async def test_the_http_protocol_is_served_kept_alive_and_counted(tmp_path: Path) -> None:
    async with running(plan_from(tmp_path, HTTP)) as sup:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "web"))
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            got = await reader.read()
            writer.close()
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
        assert got == head + b"\r\nhi\n" + head + b"Connection: close\r\n\r\nhi\n"
        stats = sup.children[0].stats
        await eventually(lambda: stats.active == 0)
        assert stats.total == 1
        assert sum(stats.duration_counts) == 1


def echo_config(policy: str) -> str:
    return f"""
servers:
  - {{name: e, kind: protocol, handler: "tests.test_protocol:make_echo", port: 0, on_handler_error: {policy},
      backoff: {{initial: 0}}}}
"""


async def test_a_callback_error_under_log_closes_that_connection_only(tmp_path: Path) -> None:
    async with running(plan_from(tmp_path, echo_config("log"))) as sup:
        port = port_of(sup, "e")
        assert await talk(port, b"boom\n") == b""  # closed, no answer
        assert await talk(port, b"who\n") == b"gen 1\n"  # same generation, still serving
        assert sup.children[0].stats.handler_errors == 1


async def test_data_received_errors_are_classified_not_reported_by_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The transport catches what data_received raises (no frame of ours around it): connection_lost classifies it,
    an OSError of the handler's own too, and the loop's "Fatal error" report of it is dropped."""
    async with running(plan_from(tmp_path, echo_config("log"))) as sup:
        port = port_of(sup, "e")
        stats = sup.children[0].stats
        for line in (b"boom\n", b"boom\n", b"deny\n"):
            assert await talk(port, line) == b""
        await eventually(lambda: stats.handler_errors == 3)
        assert await talk(port, b"who\n") == b"gen 1\n"
        assert stats.client_errors["reset"] == 0
        assert stats.last_handler_error == "PermissionError: denied by the handler"
    assert [r for r in caplog.records if "Fatal error" in r.getMessage()] == []
    assert sum("handler error, connection closed" in r.getMessage() for r in caplog.records) == 2  # folded


async def test_errors_in_its_timers_tasks_and_pause_writing_are_handler_errors_of_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not lost: the loop's report of them would name no server and count nothing; each closes its connection,
    is counted and logged under on_handler_error, and the loop's own report is dropped."""
    spawner = 'servers: [{name: s, kind: protocol, handler: "tests.test_protocol:make_spawner", port: 0}]'
    async with running(plan_from(tmp_path, spawner)) as sup:
        port = port_of(sup, "s")
        stats = sup.children[0].stats
        for n, line in enumerate((b"tick\n", b"task\n", b"flood\n", b"resume\n"), 1):
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(line)
                if line == b"flood\n":  # not read: the server's buffer stays full, pause_writing is what fails
                    await eventually(lambda n=n: stats.handler_errors == n)  # type: ignore[misc]
                with contextlib.suppress(ConnectionResetError):  # aborted by the server
                    while await reader.read(1 << 16):
                        pass  # the end: the server closed it (each error closes its connection)
                await eventually(lambda n=n: stats.handler_errors == n)  # type: ignore[misc]
                writer.close()
        assert stats.last_handler_error == "MemoryError: failed in resume_writing"
        assert stats.active == 0
    logged = [r.getMessage() for r in caplog.records]
    loops_own = ("Exception in callback", "never retrieved", "pause_writing() failed", "resume_writing() failed")
    assert [m for m in logged if any(own in m for own in loops_own)] == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []  # nothing else went wrong either
    for error in ("LookupError", "ArithmeticError", "BufferError", "MemoryError"):
        assert sum(f"handler error, connection closed: {error}" in m for m in logged) == 1, logged


async def test_a_data_received_error_over_tls_is_classified_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = trustme.CA()
    server_files(ca, tmp_path)
    config = echo_config("log").replace("port: 0,", "port: 0, tls: {cert: server.pem, key: server.key},")
    async with running(plan_from(tmp_path, config)) as sup:
        port = port_of(sup, "e")
        stats = sup.children[0].stats
        for line in (b"boom\n", b"who\n"):
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(ca))
                writer.write(line)
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    assert await reader.readline() == (b"gen 1\n" if line == b"who\n" else b"")
                writer.close()
        await eventually(lambda: stats.handler_errors == 1)
        assert stats.client_errors["reset"] == 0
    assert [r for r in caplog.records if "Fatal error" in r.getMessage()] == []


async def test_a_callback_error_under_restart_restarts_the_server(tmp_path: Path) -> None:
    async with running(plan_from(tmp_path, echo_config("restart"))) as sup:
        port = port_of(sup, "e")
        assert await talk(port, b"boom\n") == b""
        await wait_state(sup, "e", ChildState.RUNNING, generation=2)
        assert await talk(port, b"who\n") == b"gen 2\n"
        assert sup.children[0].stats.handler_errors == 1


GATED = """
servers:
  - {name: g, kind: protocol, handler: "tests.test_protocol:gated", port: 0, on_handler_error: restart,
     backoff: {initial: 0}}
"""


async def test_clients_in_a_restart_gap_are_parked_then_served_by_the_next_generation(tmp_path: Path) -> None:
    async with running(plan_from(tmp_path, GATED)) as sup:
        port = port_of(sup, "g")
        stats = sup.children[0].stats
        GATE["g"] = asyncio.Event()
        assert await talk(port, b"boom\n") == b""
        await eventually(lambda: sup.snapshot().child("g").generation == 2)  # type: ignore[union-attr]
        waiting = [asyncio.ensure_future(talk(port, b"who\n")) for _ in range(5)]
        await eventually(lambda: stats.parked == 5)
        assert not any(w.done() for w in waiting)
        GATE["g"].set()
        assert await asyncio.gather(*waiting) == [b"gen 2\n"] * 5  # none refused, none dropped


async def test_a_buffered_protocol_gets_what_parked_clients_sent_in_the_gap(tmp_path: Path) -> None:
    """A parked connection's first bytes are handed over by buffer_updated (it has no data_received)."""
    config = GATED.replace("tests.test_protocol:gated", "tests.test_protocol:gated_buffered")
    async with running(plan_from(tmp_path, config)) as sup:
        port = port_of(sup, "g")
        stats = sup.children[0].stats
        GATE["g"] = asyncio.Event()
        assert await talk(port, b"boom\n") == b""
        await eventually(lambda: sup.snapshot().child("g").generation == 2)  # type: ignore[union-attr]
        waiting = [asyncio.ensure_future(talk(port, b"hello %d\n" % n)) for n in range(5)]
        await eventually(lambda: stats.parked == 5)
        GATE["g"].set()
        assert await asyncio.gather(*waiting) == [b"hello %d\n" % n for n in range(5)]


async def test_a_shutdown_in_a_restart_gap_hands_the_parked_clients_to_the_draining_generation(
    tmp_path: Path,
) -> None:
    """Closed for good with clients parked: generation 1, still draining a connection, serves them and drains
    them in turn (drain() past FRESH_WINDOW) instead of their being reset."""
    async with running(plan_from(tmp_path, GATED)) as sup:
        port = port_of(sup, "g")
        stats = sup.children[0].stats
        GATE["g"], GATE["hold"] = asyncio.Event(), asyncio.Event()
        held_r, held_w = await asyncio.open_connection("127.0.0.1", port)
        held_w.write(b"hold\n")
        async with asyncio.timeout(DEADLINE):
            assert await held_r.readline() == b"hold\n"
        assert await talk(port, b"boom\n") == b""
        await eventually(lambda: sup.snapshot().child("g").generation == 2)  # type: ignore[union-attr]
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
        for _, writer in clients:
            writer.write(b"who\n")
        await eventually(lambda: stats.parked == 5)
        sup.request_stop("test")
        async with asyncio.timeout(DEADLINE):
            answers = [await reader.read() for reader, _ in clients]
        assert answers == [b"gen 1\n"] * 5  # answered, then drained (drain() closed them)
        assert len(DRAINED) == 6
        GATE["hold"].set()
        async with asyncio.timeout(DEADLINE):
            assert await held_r.read() == b""
        for _, writer in clients:
            writer.close()
        held_w.close()


async def test_the_drain_calls_drain_and_lets_an_in_flight_response_finish(tmp_path: Path) -> None:
    config = HTTP.replace("port: 0,", "port: 0, shutdown_timeout: 5s,")
    async with asyncio.timeout(DEADLINE):
        async with running(plan_from(tmp_path, config)) as sup:
            port = port_of(sup, "web")
            idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
            busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
            busy_w.write(b"GET /sleep?s=0.3 HTTP/1.1\r\n\r\n")
            await busy_w.drain()
            await eventually(lambda: sup.children[0].stats.active == 2)
        # the shutdown drained: the idle connection was closed at once, the busy one got its answer, then closed
        assert await idle_r.read() == b""
        answer = await busy_r.read()
        assert answer.startswith(b"HTTP/1.1 200 OK")
        assert answer.endswith(b"slept 0.3\n")
        assert b"Connection: close" in answer
        idle_w.close()
        busy_w.close()


async def test_a_restart_spares_a_fresh_connection_whose_first_request_is_on_the_way(tmp_path: Path) -> None:
    """The stream kind's rule: accepted less than FRESH_WINDOW ago -> the old generation serves its first request
    (a keep-alive client that connected just before a reload or a worker roll loses nothing). Whether a byte came
    is not tracked (a frame per data_received): a young connection that was served and is idle is drained at the
    end of the window too; an older one at once."""
    async with asyncio.timeout(DEADLINE):
        async with running(plan_from(tmp_path, HTTP)) as sup:
            port = port_of(sup, "web")
            served_r, served_w = await asyncio.open_connection("127.0.0.1", port)
            served_w.write(b"GET / HTTP/1.1\r\n\r\n")
            assert (await served_r.readuntil(b"hi\n")).startswith(b"HTTP/1.1 200 OK")
            fresh_r, fresh_w = await asyncio.open_connection("127.0.0.1", port)
            await eventually(lambda: sup.children[0].stats.active == 2)
            restart = asyncio.ensure_future(sup.control("restart", "web"))
            await wait_state(sup, "web", ChildState.RUNNING, generation=2)  # generation 1 drains now
            fresh_w.write(b"GET / HTTP/1.1\r\n\r\n")  # its request, after the drain began
            answer = await fresh_r.read()
            assert answer.startswith(b"HTTP/1.1 200 OK"), answer  # answered, then closed: nothing lost
            assert await served_r.read() == b""  # idle after its answer: drained at the window's end
            assert (await restart).ok
            for writer in (served_w, fresh_w):
                writer.close()


async def test_the_drain_deadline_aborts_what_is_left(tmp_path: Path) -> None:
    config = HTTP.replace("port: 0,", "port: 0, shutdown_timeout: 0.2s,")
    async with asyncio.timeout(DEADLINE):
        async with running(plan_from(tmp_path, config)) as sup:
            reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "web"))
            writer.write(b"GET /sleep?s=30 HTTP/1.1\r\n\r\n")
            await writer.drain()
            stats = sup.children[0].stats
            await eventually(lambda: stats.active == 1)
        assert stats.drain_cancelled == 1
        assert stats.active == 0
        with contextlib.suppress(ConnectionError):
            assert await reader.read() == b""
        writer.close()


@pytest.mark.parametrize("handler", ["tests.test_protocol:Echo", "tests.test_protocol:make_instances"])
async def test_connections_are_listed_in_accept_order_through_the_protocols_or_a_node(
    tmp_path: Path, handler: str
) -> None:
    """A class's protocols carry their own links (no dict entry, no tuple); a factory's instances get a Node."""
    config = f"servers:\n  - {{name: e, kind: protocol, handler: '{handler}', port: 0, shutdown_timeout: 5s}}\n"
    async with asyncio.timeout(DEADLINE):
        async with running(plan_from(tmp_path, config)) as sup:
            port, stats = port_of(sup, "e"), sup.children[0].stats
            clients = []
            for _ in range(3):  # one after the other: accepted in this order
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"hi\n")
                assert await reader.readline() == b"hi\n"
                clients.append((reader, writer))
            conns = sup.children[0].gen.conns  # type: ignore[union-attr]
            protos = [proto for proto, _ in conns.live()]
            assert len(conns) == stats.active == 3
            assert len(set(map(id, protos))) == 3
            assert len(conns.nodes) == (3 if handler.endswith("make_instances") else 0)
            clients[1][1].close()
            await eventually(lambda: stats.active == 2)
            assert [proto for proto, _ in conns.live()] == [protos[0], protos[2]]  # unlinked, the order kept
            assert getattr(protos[1], "_supervisor_next", None) is None  # it keeps no other connection alive
            assert protos[1] not in conns.nodes
            assert sum(stats.duration_counts) == 1
        # the shutdown's drain called drain() on the two left, which closed them; each duration observed
        assert DRAINED == [1, 1]
        assert (len(conns), stats.active, sum(stats.duration_counts), conns.nodes) == (0, 0, 3, {})
        for reader, writer in clients:
            assert await reader.read() == b""
            writer.close()


IDLE = """
servers:
  - {name: own, kind: protocol, handler: "tests.test_protocol:make_echo", port: 0, idle_timeout: 300ms}
  - {name: node, kind: protocol, handler: "tests.test_protocol:make_instances", port: 0, idle_timeout: 300ms}
"""
MARGIN = 0.3  # past a timeout, how late the close may come on a busy machine (as test_client_faults)


@pytest.mark.parametrize("name", ["own", "node"])  # the protocol's own slots, a factory's instances' Node
async def test_idle_timeout_closes_a_silent_client_and_spares_one_that_talks(tmp_path: Path, name: str) -> None:
    loop = asyncio.get_running_loop()
    async with running(plan_from(tmp_path, IDLE)) as sup:
        port = port_of(sup, name)
        stats = sup.child(name).stats  # type: ignore[union-attr]
        started = loop.time()  # before the server's clock for it starts: it is accepted after this
        quiet_r, quiet_w = await asyncio.open_connection("127.0.0.1", port)  # connects, sends nothing
        chatty_r, chatty_w = await asyncio.open_connection("127.0.0.1", port)

        async def closed_after() -> float:
            assert await quiet_r.read() == b""  # closed by the server: a clean end-of-stream
            return loop.time() - started

        quiet = asyncio.create_task(closed_after())
        for _ in range(6):  # 0.6 s of talking, twice the timeout: never idle
            chatty_w.write(b"ping\n")
            assert await chatty_r.readline() == b"ping\n"
            await asyncio.sleep(0.1)  # the client's own pace, not a wait for the server
        async with asyncio.timeout(DEADLINE):
            # not before the timeout (less a step of uvloop's 1 ms clock: heard and due can round down to it)
            assert 0.3 - 0.001 <= await quiet < 0.3 + MARGIN
        chatty_w.write(b"still\n")
        assert await chatty_r.readline() == b"still\n"
        assert stats.client_errors["idle_timeout"] == 1
        assert stats.handler_errors == 0
        await eventually(lambda: stats.active == 1)
        for w in (quiet_w, chatty_w):
            w.close()


async def test_idle_timeout_aborts_a_client_that_neither_sends_nor_reads(tmp_path: Path) -> None:
    """close() would wait for ever to flush what such a client never reads: the connection would stay."""
    async with running(plan_from(tmp_path, IDLE)) as sup:
        stats = sup.child("own").stats  # type: ignore[union-attr]
        sock = socket.create_connection(("127.0.0.1", port_of(sup, "own")))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        try:
            # more than the kernel's buffers on both sides hold: the echo's rest waits in the transport
            await asyncio.wait_for(loop_sendall(sock, b"x" * 24_000_000), DEADLINE)
            await eventually(lambda: stats.client_errors["idle_timeout"] == 1)
            await eventually(lambda: stats.active == 0)
        finally:
            sock.close()


PATIENT = """
servers:
  - {name: p, kind: protocol, handler: "tests.test_protocol:make_patient", port: 0, idle_timeout: 300ms}
  - {name: b, kind: protocol, handler: "tests.test_protocol:make_buffered", port: 0, idle_timeout: 300ms}
"""


async def test_idle_timeout_counts_only_the_time_the_server_waits_for_the_client(tmp_path: Path) -> None:
    """Found in review: a slow answer (reading paused meanwhile) and a download the client reads at its pace were
    cut as idle. The stream kind's rule: the server's own time is not the client's silence."""
    async with running(plan_from(tmp_path, PATIENT)) as sup:
        port = port_of(sup, "p")
        stats = sup.child("p").stats  # type: ignore[union-attr]
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"slow\n")
            assert await reader.readline() == b"done\n"  # 0.6 s later: twice the timeout
            assert stats.client_errors["idle_timeout"] == 0
            writer.write(b"get 24\n")  # more than the kernel's buffers take: the rest waits in the transport
            got = 0
            while got < 24 << 20:  # 24 MiB in 256 KiB reads, 10 ms apart: about a second of downloading
                got += len(await reader.readexactly(256 << 10))  # IncompleteReadError if it was cut
                await asyncio.sleep(0.01)  # the client's own pace, not a wait for the server
            assert await reader.read() == b""  # then silent: closed, after all of it
            writer.close()
        assert stats.client_errors["idle_timeout"] == 1


async def test_idle_timeout_with_a_buffered_protocol(tmp_path: Path) -> None:
    """Its reads are buffer_updated (found in review: the server failed every start, having no data_received)."""
    async with running(plan_from(tmp_path, PATIENT)) as sup:
        port = port_of(sup, "b")
        assert await talk(port, b"hello\n") == b"hello\n"
        async with asyncio.timeout(DEADLINE):
            quiet_r, quiet_w = await asyncio.open_connection("127.0.0.1", port)
            assert await quiet_r.read() == b""
            quiet_w.close()
        assert sup.child("b").stats.client_errors["idle_timeout"] == 1  # type: ignore[union-attr]


async def test_idle_timeout_ends_a_tls_client_that_neither_sends_nor_reads(tmp_path: Path) -> None:
    """TLS's close waits for the client's own close_notify (asyncio: up to 30 s), and a TLS transport's unsent count
    leaves out what waits beneath it: the close is cut after CLOSE_GRACE."""
    ca = trustme.CA()
    server_files(ca, tmp_path)
    config = IDLE.replace("port: 0, idle", "port: 0, tls: {cert: server.pem, key: server.key}, idle")
    async with running(plan_from(tmp_path, config)) as sup:
        stats = sup.child("own").stats  # type: ignore[union-attr]
        port = port_of(sup, "own")

        def handshake() -> ssl.SSLSocket:  # then never reads nor sends again
            raw = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
            return client_context(ca).wrap_socket(raw, server_hostname="127.0.0.1")

        client = await asyncio.to_thread(handshake)
        try:
            await eventually(lambda: stats.active == 1)
            await eventually(lambda: stats.client_errors["idle_timeout"] == 1)
            await eventually(lambda: stats.active == 0, timeout=protocol_idle.CLOSE_GRACE + MARGIN + 1)
        finally:
            client.close()


async def loop_sendall(sock: socket.socket, data: bytes) -> None:
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_sendall(sock, data)


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ('{name: a, kind: bogus, handler: "tests.test_protocol:Echo", port: 0}', "servers[0].kind: expected one of"),
        ('{name: a, kind: protocol, handler: "supervisor.handlers.echo:handle", port: 0}', "not usable with kind"),
        ('{name: a, handler: "tests.test_protocol:Echo", port: 0}', "add 'kind: protocol'"),
        ('{name: a, kind: protocol, handler: "tests.test_protocol:Echo", port: 0, read_limit: 4KiB}',
         "servers[0].read_limit: 'read_limit' applies to kind stream only"),
        ('{name: a, kind: protocol, handler: "tests.test_protocol:Echo", port: 0, max_write_buffer: 1MiB}',
         "servers[0].max_write_buffer: 'max_write_buffer' applies to kind stream only"),
        ('{name: a, kind: protocol, handler: "tests.test_protocol:Echo", port: 0, options: {x: 1}}',
         "is a Protocol class and takes no options"),
    ],
)  # fmt: skip
def test_config_errors_are_located(tmp_path: Path, server: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        plan_from(tmp_path, f"servers:\n  - {server}\n")
    assert expected in str(err.value)
    assert re.search(r"\.yaml:\d+: servers\[0\]\.(kind|handler|read_limit|max_write_buffer|options): ", str(err.value))


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.e2e
def test_sigterm_lets_an_in_flight_protocol_response_finish_then_exits_0(tmp_path: Path, loop: str) -> None:
    config = write_config(
        tmp_path,
        f"""
        supervisor: {{loop: {loop}}}
        metrics: {{enabled: false}}
        console: {{enabled: false}}
        servers:
          - {{name: web, kind: protocol, handler: "supervisor.handlers.http_protocol:make", port: 0}}
        """,
    )
    with SupervisorProcess(config) as sp:
        port = sp.ready()["web"]
        idle = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        busy = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        # one segment, two requests: the first answer proves the server read both, so /sleep is in flight
        busy.sendall(b"GET / HTTP/1.1\r\n\r\nGET /sleep?s=0.5 HTTP/1.1\r\n\r\n")
        answer = b""
        while not answer.endswith(b"hello\n"):
            answer += busy.recv(4096)
        sp.signal(signal.SIGTERM)
        answer = b""
        while chunk := busy.recv(4096):
            answer += chunk
        assert sp.wait() == 0
        assert answer.endswith(b"slept 0.5\n")
        assert idle.recv(1) == b""  # the idle keep-alive client was closed at the drain, it did not hold the exit
        idle.close()
        busy.close()
    assert "Traceback" not in sp.output
