"""Logs per server: records made by a handler, a lifespan and its background task carry the server's name and
generation; the coordinator's own "server NAME ..." lines belong to that server; ``--log-format json`` writes
one object per line from a real ``supervisor run``; each server's recent lines are kept, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from supervisor import logs
from supervisor.handler import Handler
from supervisor.state import ChildState
from tests.e2e_util import write_config
from tests.helpers import ask, eventually, plan_from, port_of, running, wait_state
from tests.proc import SupervisorProcess

APP = logging.getLogger("app")


async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        APP.info("got %r", line.strip())
        if line.strip() == b"crash":
            raise RuntimeError("asked to")
        writer.write(line)
        await writer.drain()


@contextlib.asynccontextmanager
async def with_heartbeat(options: Mapping[str, Any]) -> AsyncIterator[Handler]:
    async def beat() -> None:
        APP.info("heartbeat")

    task = asyncio.create_task(beat())  # a background task of the lifespan: its context is the server's
    APP.info("entering")
    yield chatty
    await task


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(logs.ServerTag())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def tags(self, logger: str = "app") -> list[tuple[str, int, str]]:
        return [(r.server, r.generation, r.getMessage()) for r in self.records if r.name == logger]  # type: ignore[attr-defined]


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.INFO
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def test_records_carry_the_server_and_generation(tmp_path: Path, kept: Kept) -> None:
    plan = plan_from(
        tmp_path,
        """
        servers:
          - {name: one, handler: "tests.test_logs:with_heartbeat", port: 0, on_handler_error: restart,
             backoff: {initial: 0}}
          - {name: two, handler: "tests.test_logs:chatty", port: 0}
        """,
    )
    async with running(plan) as sup:
        assert await ask(port_of(sup, "one"), b"a") == b"a\n"
        assert await ask(port_of(sup, "two"), b"b") == b"b\n"
        assert await ask(port_of(sup, "one"), b"crash") == b""
        await wait_state(sup, "one", ChildState.RUNNING, generation=2)
        await eventually(lambda: ("one", 2, "heartbeat") in kept.tags())
    tags = kept.tags()
    assert ("one", 1, "entering") in tags
    assert ("one", 1, "heartbeat") in tags
    assert ("one", 1, "got b'a'") in tags
    assert ("two", 1, "got b'b'") in tags
    assert ("one", 1, "got b'crash'") in tags
    assert ("one", 2, "entering") in tags
    # the coordinator's line about the failure is one's too (no generation: it is about the server)
    assert any(s == "one" and m.startswith("server one failed: RuntimeError") for s, _, m in kept.tags("supervisor"))


def test_formats() -> None:
    record = logging.LogRecord("app", logging.WARNING, __file__, 1, "got %s", ("x",), None)
    record.server, record.generation = "echo", 3
    assert logs.TextFormatter().format(record).endswith(" WARNING app [echo#3]: got x")
    line = json.loads(logs.JsonFormatter().format(record))
    assert line | {"ts": "T"} == {
        "ts": "T", "level": "WARNING", "logger": "app", "message": "got x", "server": "echo", "generation": 3
    }  # fmt: skip
    assert line["ts"].endswith("Z")


def test_recent_lines_are_bounded_and_followed() -> None:
    recent = logs.Recent()
    total = 2 * logs.RECENT_LINES + 100
    for i in range(total):
        record = logging.LogRecord(
            "app", logging.INFO, __file__, 1, "x" * (i == total - 2) * 10_000 + "line %d", (i,), None
        )
        record.server, record.generation = ("a" if i % 2 else "b"), 1
        recent.handle(record)
    lines, seq = recent.tail("a", 5)
    assert [line.rsplit(" ", 1)[1] for line in lines] == [str(i) for i in range(total - 9, total, 2)]
    everything, _ = recent.tail("b", 10**6)
    assert len(everything) == logs.RECENT_LINES  # bounded per server
    assert all(len(line) <= logs.LINE_MAX for line in everything)
    assert recent.tail("nobody", 10) == ([], seq)
    newer = logging.LogRecord("app", logging.INFO, __file__, 1, "fresh", (), None)
    newer.server, newer.generation = "a", 2
    recent.handle(newer)
    recent.wait(seq, timeout=1)
    assert recent.tail("a", 10, after=seq)[0][0].endswith("[a#2]: fresh")


@pytest.mark.e2e
def test_json_log_format_from_a_real_process(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        """
        metrics: {enabled: false}
        console: {enabled: false}
        servers:
          - {name: talk, handler: "tests.test_logs:chatty", port: 0}
        """,
    )
    with SupervisorProcess(config, "--log-format", "json") as sp:
        port = _port(sp)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"hello\n")
            assert conn.recv(100) == b"hello\n"
        sp.wait_for(r'"message": "got b\'hello\'"')
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    lines = [json.loads(line) for line in sp.output.splitlines()]  # every line is one JSON object
    got = next(line for line in lines if line["message"] == "got b'hello'")
    assert (got["logger"], got["level"], got["server"], got["generation"]) == ("app", "INFO", "talk", 1)
    assert any(line["message"].startswith("shutdown complete") for line in lines)


def _port(sp: SupervisorProcess) -> int:
    found = sp.wait_for(r'"message": "server talk listening on 127.0.0.1:(\d+) \(generation 1\)"')
    return int(found[1])
