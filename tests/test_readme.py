"""The README's examples are the files of examples/, shown as they are and run from there.

Each ```python block of README.md is followed by the name of the file it shows, and equals that file byte for
byte: editing one without the other fails here. The handler tests serve those files (not text copied out of the
README), and ``supervisor run examples/examples.yaml`` runs as a real process (on free ports).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import re
import shutil
import signal
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from supervisor import ctl, protocol_connections
from supervisor.config import load_config
from supervisor.plan import Plan
from supervisor.state import ChildState
from tests.e2e_util import free_port_run
from tests.helpers import DEADLINE, ask, eventually, plan_from, port_of, running, wait_state
from tests.proc import REPO, SupervisorProcess

EXAMPLES = REPO / "examples"
EXAMPLES_CONFIG = EXAMPLES / "examples.yaml"
CLOCK_STEP = 0.001  # uvloop's loop.time() moves in whole milliseconds (asyncio's in nanoseconds)
README = (REPO / "README.md").read_bytes().decode()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
# a block, a blank line, then the file it shows: "`examples/chat.py`" (maybe followed by more words)
SHOWN = re.findall(r"```python\n(.*?)```\n\n`(examples/[\w.]+\.py)`", README, re.S)


def test_every_python_block_names_its_examples_file() -> None:
    named = [path for _, path in SHOWN]
    assert len(named) == len(BLOCKS), "a ```python block of README.md is not followed by `examples/NAME.py`"
    assert sorted(named) == sorted(f"examples/{p.name}" for p in EXAMPLES.glob("*.py"))  # each file once


@pytest.mark.parametrize(("block", "path"), SHOWN, ids=[path for _, path in SHOWN])
def test_the_readme_shows_the_examples_file_as_it_is(block: str, path: str) -> None:
    actual = (REPO / path).read_bytes().decode()
    if block != actual:
        diff = difflib.unified_diff(
            actual.splitlines(keepends=True), block.splitlines(keepends=True), path, f"README.md's block of {path}"
        )
        pytest.fail(f"README.md and {path} differ; make them the same:\n{''.join(diff)}", pytrace=False)


@pytest.fixture
def examples() -> Iterator[None]:
    """examples/ importable as the config's folder makes it (``handler: echo:handle``), and forgotten after."""
    modules = [p.stem for p in EXAMPLES.glob("*.py")]
    saved = list(sys.path)
    sys.path.insert(0, str(EXAMPLES))
    for name in modules:
        sys.modules.pop(name, None)
    yield
    sys.path[:] = saved
    for name in modules:
        sys.modules.pop(name, None)


def example_plan(tmp_path: Path, text: str) -> Plan:
    """A plan whose handlers are examples/ modules; checks they were imported from there."""
    plan = plan_from(tmp_path, text)
    for server in plan.servers:
        module = server.handler_path.partition(":")[0]
        assert sys.modules[module].__file__ == str(EXAMPLES / f"{module}.py")
    return plan


@pytest.mark.usefixtures("examples")
async def test_the_plain_handler_example(tmp_path: Path) -> None:
    plan = example_plan(tmp_path, "servers: [{name: e, handler: 'echo:handle', port: 0}]")
    async with running(plan) as sup:
        assert await ask(port_of(sup, "e"), b"as written") == b"as written\n"


@pytest.mark.usefixtures("examples")
async def test_the_lifespan_example_restarts_and_stops_promptly(tmp_path: Path) -> None:
    plan = example_plan(
        tmp_path,
        """
        supervisor: {shutdown_timeout: 30s}
        servers: [{name: chat, handler: "chat:room", port: 0, shutdown_timeout: 20s, options: {every: 0.05}}]
        """,
    )
    loop = asyncio.get_running_loop()
    async with running(plan) as sup:
        port = port_of(sup, "chat")
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(DEADLINE):
            assert await r1.readline() == b"* ping\n"  # the heartbeat runs
            w1.write(b"hi\n")  # both have spoken: neither is a just-connected client the restart would wait for
            while (line := await r2.readline()) == b"* ping\n":
                pass
            assert line == b"hi\n"
            w2.write(b"hello\n")
            while (line := await r1.readline()) == b"* ping\n":
                pass
        assert line == b"hello\n"
        started = loop.time()
        await sup.control("restart", "chat")
        async with asyncio.timeout(DEADLINE):
            while (line := await r1.readline()) == b"* ping\n":
                pass
        assert line == b"* server shutting down, goodbye\n"
        child = sup.children[0]
        await eventually(lambda: len(child.live) == 1)  # the old generation is gone, heartbeat and all
        assert loop.time() - started < 1.0  # not the 20 s drain budget
        await wait_state(sup, "chat", ChildState.RUNNING, generation=2)
        w1.close()
        w2.close()
        stopping = loop.time()
    assert loop.time() - stopping < 1.0  # shutdown, likewise


async def get_hello(port: int) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    """A GET on a new connection: the answer's body, and the connection, left open (keep-alive)."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n"
        return await reader.readexactly(6), reader, writer


@pytest.mark.usefixtures("examples")
async def test_the_protocol_example_answers_and_its_drain_closes_idle_connections_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = example_plan(
        tmp_path,
        "servers: [{name: hello, kind: protocol, handler: 'hello_protocol:Hello', port: 0, shutdown_timeout: 20s}]",
    )
    hello = sys.modules["hello_protocol"].Hello
    drained: list[asyncio.Protocol] = []
    original = hello.drain

    def drain(self: asyncio.Protocol) -> None:  # the example's drain(), watched
        drained.append(self)
        original(self)

    monkeypatch.setattr(hello, "drain", drain)
    window = 0.3  # FRESH_WINDOW (1 s), shortened: the answered connection must be older than it
    monkeypatch.setattr(protocol_connections, "FRESH_WINDOW", window)
    loop = asyncio.get_running_loop()
    async with running(plan) as sup, contextlib.AsyncExitStack() as writers:
        port = port_of(sup, "hello")
        body, answered_r, answered_w = await get_hello(port)
        writers.callback(answered_w.close)  # closed even if an assert fails: no transport leaks into later tests
        answered = loop.time()  # the server accepted it before it answered: on the same loop's clock, no later
        assert body == b"hello\n"
        await asyncio.sleep(window)  # not an event: the connection's age is what is under test
        # ...and strictly older than the window on the loop's clock: uvloop's is in 1 ms steps, so after the sleep
        # the age can be exactly `window`, a tie the drain's float comparison breaks either way (~1 run in 15)
        await eventually(lambda: loop.time() - answered >= window + CLOCK_STEP)
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)  # connected, never sends
        writers.callback(silent_w.close)
        stats = sup.children[0].stats
        await eventually(lambda: stats.active == 2)  # both are the first generation's connections
        started = loop.time()
        await sup.control("restart", "hello")
        async with asyncio.timeout(DEADLINE):
            assert await answered_r.read() == b""  # closed by the server: idle after its answer
            answered_at = loop.time() - started
            assert len(drained) == 1  # drained alone, before the window's timer drains the silent one
            assert await silent_r.read() == b""  # a young one is spared the window: its request may be on the way
            silent_at = loop.time() - started
        assert answered_at < window  # at once, not the 20 s drain budget
        assert window - 0.01 <= silent_at < window + 1.0, silent_at  # then drained, not the 20 s
        assert len(drained) == 2  # drain() closed them, once each
        assert stats.drain_cancelled == 0
        await wait_state(sup, "hello", ChildState.RUNNING, generation=2)
        body, _, again_w = await get_hello(port)  # the next generation serves
        writers.callback(again_w.close)
        assert body == b"hello\n"


@pytest.mark.usefixtures("examples")
async def test_the_protocol_example_answers_a_head_in_pieces_and_pipelined_heads(tmp_path: Path) -> None:
    plan = example_plan(tmp_path, "servers: [{name: hello, kind: protocol, handler: 'hello_protocol:Hello', port: 0}]")
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"
    async with running(plan) as sup, asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(sup, "hello"))
        for piece in (b"GET / HTTP/1.1\r\nHo", b"st: x\r\n\r", b"\n"):  # one head in three segments
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.05)  # not an event: the gap is what makes them separate segments
        assert await reader.readexactly(len(answer)) == answer
        writer.write(b"GET / HTTP/1.1\r\n\r\n" * 2)  # two heads in one segment: two answers
        assert await reader.readexactly(2 * len(answer)) == 2 * answer
        writer.close()


def test_the_examples_config_declares_the_readme_ports() -> None:
    config = load_config(EXAMPLES_CONFIG)
    ports = {s.name: s.port for s in config.servers}
    assert ports == {"echo": 18888, "chat": 17777, "hello": 18080}
    assert (config.metrics.port, config.console.port) == (19100, 20111)
    (section,) = re.findall(r"^## Writing a handler\n(.*?)^## ", README, re.S | re.M)
    for port in [*ports.values(), config.metrics.port, config.console.port]:
        assert f":{port}" in section, f"README's 'Writing a handler' does not give port {port}"


def examples_on_free_ports(tmp_path: Path) -> tuple[Path, int]:
    """examples/examples.yaml with its handler modules beside it, as it is but for its ports (and a faster
    heartbeat): the suite passes beside a running copy of it."""
    config = load_config(EXAMPLES_CONFIG)
    console = free_port_run(2)
    original = EXAMPLES_CONFIG.read_text()
    text = re.sub(r"^(\s+port:) \d+$", r"\1 0", original, flags=re.M)  # every server
    text = text.replace(f"port: {config.metrics.port}}}", "port: 0}")
    text = text.replace(f"port: {config.console.port}}}", f"port: {console}}}")
    text = text.replace("options: {every: 10}", "options: {every: 0.05}")
    assert re.sub(r"port: \d+|every: [\d.]+", "", text) == re.sub(r"port: \d+|every: [\d.]+", "", original)
    path = tmp_path / "examples.yaml"
    path.write_text(text)
    copy = load_config(path)
    assert [s.port for s in copy.servers] == [0, 0, 0]
    assert (copy.metrics.port, copy.console.port) == (0, console)
    assert {s.name: s.options for s in copy.servers}["chat"] == {"every": 0.05}
    for server in config.servers:
        shutil.copy(EXAMPLES / f"{server.handler.partition(':')[0]}.py", tmp_path)
    return path, console


def lines_until_eof(stream: BinaryIO) -> list[bytes]:
    """What the server still sends until it closes the connection, heartbeats aside."""
    with stream:
        return [line for line in stream if line != b"* ping\n"]


@pytest.mark.e2e
def test_supervisor_run_serves_every_example(tmp_path: Path) -> None:
    config, console = examples_on_free_ports(tmp_path)
    with SupervisorProcess(config) as sp:
        ports = sp.ready()
        assert set(ports) == {"echo", "chat", "hello"}
        metrics = int(sp.wait_for(r"metrics listening on http://127\.0\.0\.1:(\d+)/metrics")[1])
        with socket.create_connection(("127.0.0.1", ports["echo"]), timeout=DEADLINE) as s, s.makefile("rb") as f:
            s.sendall(b"hi there\n")
            assert f.readline() == b"hi there\n"
        one = socket.create_connection(("127.0.0.1", ports["chat"]), timeout=DEADLINE)
        two = socket.create_connection(("127.0.0.1", ports["chat"]), timeout=DEADLINE)
        one_lines, two_lines = one.makefile("rb"), two.makefile("rb")
        assert one_lines.readline() == two_lines.readline() == b"* ping\n"  # both are in the room
        one.sendall(b"hi room\n")
        while (line := two_lines.readline()) == b"* ping\n":
            pass
        assert line == b"hi room\n"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['hello']}/", timeout=DEADLINE) as resp:
            assert resp.read() == b"hello\n"
        idle = socket.create_connection(("127.0.0.1", ports["hello"]), timeout=DEADLINE)
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        idle_lines = idle.makefile("rb")
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"
        assert idle_lines.read(len(answer)) == answer  # answered, so served: now an idle keep-alive connection
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=DEADLINE) as resp:
            scraped = resp.read().decode()
        for name in ports:
            assert f'supervisor_server_up{{server="{name}"}} 1.0' in scraped
        reply = ctl.run("status", host="127.0.0.1", port=console, timeout=15)
        assert reply.ok
        assert "supervisor: ready, 3/3 server(s) running" in reply.text
        sp.signal(signal.SIGTERM)
        assert lines_until_eof(one_lines) == lines_until_eof(two_lines) == [b"* server shutting down, goodbye\n"]
        one.close()
        two.close()
        assert lines_until_eof(idle_lines) == []  # closed at the drain: it did not hold the exit
        idle.close()
        assert sp.wait() == 0
    assert "Traceback" not in sp.output


def test_the_config_reference_is_valid_and_shows_the_defaults(tmp_path: Path) -> None:
    """README's "Every key, with its default" block: a config `check` accepts, whose values are the defaults."""
    import dataclasses

    from supervisor.spec import ConsoleSpec, LoggingSpec, MetricsSpec, ServerSpec, SupervisorSpec

    (block,) = re.findall(r"Every key, with its default.*?```yaml\n(.*?)```", README, re.S)
    path = tmp_path / "reference.yaml"
    path.write_text(block)
    config = load_config(path)
    sections = (SupervisorSpec(), MetricsSpec(), ConsoleSpec(), LoggingSpec())
    assert (config.supervisor, config.metrics, config.console, config.logging) == sections
    (server,) = config.servers
    example = {"name", "handler", "port", "options", "locations"}  # what every server writes for itself
    defaults = ServerSpec(name="", handler="", port=0)
    for f in dataclasses.fields(ServerSpec):
        if f.name not in example:
            assert getattr(server, f.name) == getattr(defaults, f.name), f"README shows {f.name} with another value"
    documented = set(re.findall(r"^\s+(?:- |# ?)?(\w+):", block, re.M))
    assert {f.name for f in dataclasses.fields(ServerSpec)} - {"locations"} <= documented  # every key is shown


def test_the_module_table_lists_every_module() -> None:
    """README's Development layout names what each module owns: a new module must get its row."""
    table = README[README.index("| module | owns |") : README.index("## Benchmarks")]
    listed = set(re.findall(r"`(\w+\.py)`", table))
    modules = {p.name for p in (REPO / "supervisor").glob("*.py")} - {"__init__.py", "__main__.py"}
    assert modules - listed == set(), "add a row for each to README's module table"
    assert listed - modules == set(), "the table names modules that are gone"
