"""Logs per server: records made by a handler, a lifespan and its background task carry the server's name and
generation; the coordinator's own "server NAME ..." lines belong to that server; ``--log-format json`` writes
one object per line from a real ``supervisor run``; each server's recent lines are kept, bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from supervisor import logs
from supervisor.handler import Handler
from supervisor.state import ChildState
from tests.e2e_util import free_port, write_config
from tests.helpers import ask, eventually, plan_from, port_of, running, wait_state
from tests.proc import REPO, SupervisorProcess

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


@pytest.mark.e2e
def test_the_config_logging_section_sets_the_format_and_the_command_line_wins(tmp_path: Path) -> None:
    body = """
        logging: {format: json, level: INFO}
        metrics: {enabled: false}
        console: {enabled: false}
        servers:
          - {name: talk, handler: "tests.test_logs:chatty", port: 0}
        """
    with SupervisorProcess(write_config(tmp_path, body)) as sp:
        _port(sp)  # a JSON line, with no --log-format
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    with SupervisorProcess(write_config(tmp_path, body), "--log-format", "text") as sp:
        sp.ready()  # the text line
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert not any(line.startswith("{") for line in sp.output.splitlines())


def _wait_for_line(path: Path, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        if found := re.search(pattern, text, re.M):
            return found
        assert time.monotonic() < deadline, f"no line matching {pattern!r} in {path} within {timeout}s:\n{text}"
        time.sleep(0.05)  # polling a file a handler of the process under test writes: no event to wait on


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_a_dict_config_brings_its_own_handlers_and_every_line_still_names_its_server(
    tmp_path: Path, workers: int
) -> None:
    text_log, json_log = tmp_path / "app.log", tmp_path / "app.jsonl"
    config = write_config(
        tmp_path,
        f"""
        supervisor: {{workers: {workers}}}
        metrics: {{enabled: false}}
        console: {{enabled: false}}
        logging:
          dict_config:
            version: 1
            formatters:
              mine: {{format: "%(levelname)s [%(server)s#%(generation)s] %(name)s: %(message)s"}}
              json: {{"()": supervisor.logs.JsonFormatter}}
            handlers:
              text: {{class: logging.FileHandler, filename: "{text_log}", formatter: mine}}
              json: {{class: logging.FileHandler, filename: "{json_log}", formatter: json}}
            root: {{level: INFO, handlers: [text, json]}}
        servers:
          - {{name: talk, handler: "tests.test_logs:chatty", port: 0}}
        """,
    )
    with SupervisorProcess(config) as sp:
        port = int(_wait_for_line(text_log, r"server talk listening on 127\.0\.0\.1:(\d+) \(generation 1\)")[1])
        _wait_for_line(text_log, r"supervisor: supervisor ready")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"hello\n")
            assert conn.recv(100) == b"hello\n"
        _wait_for_line(text_log, r"^INFO \[talk#1\] app: got b'hello'$")  # the user's format, our tags
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert "got b'hello'" not in sp.output  # the built-in stderr handler is not there beside the user's
    lines = [json.loads(line) for line in json_log.read_text().splitlines()]
    got = next(line for line in lines if line["message"] == "got b'hello'")
    assert (got["server"], got["generation"]) == ("talk", 1)
    assert got.get("worker", 0) in ((1, 2) if workers > 1 else (0,))  # a worker process's lines say which


@pytest.mark.e2e
def test_a_dict_config_that_cannot_be_applied_exits_2_at_its_line_and_starts_nothing(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path,
        f"""
        metrics: {{enabled: false}}
        console: {{enabled: false}}
        logging:
          dict_config:
            version: 1
            handlers: {{out: {{class: nowhere.Handler}}}}
        servers:
          - {{name: talk, handler: "tests.test_logs:chatty", port: {port}}}
        """,
    )
    with SupervisorProcess(config) as sp:
        assert sp.wait() == 2
    out = sp.output
    assert "Traceback" not in out, out
    first, last = out.splitlines()[0], out.splitlines()[-1]
    assert re.fullmatch(rf"{re.escape(str(config))}:5: logging\.dict_config: Unable to configure handler 'out'.*"
                        r"No module named 'nowhere'.*", first), first  # fmt: skip
    assert last == f"supervisor: 1 problem in {config}; nothing was started", out
    with socket.socket() as probe:  # nothing was bound
        probe.bind(("127.0.0.1", port))


def _readme_dict_config() -> str:
    (block,) = re.findall(r"```yaml\n(logging:\n  dict_config:\n.*?)```", (REPO / "README.md").read_text(), re.S)
    return str(block)


@pytest.mark.e2e
def test_the_readme_dict_config_runs_as_written_and_its_error_example_is_what_run_says(tmp_path: Path) -> None:
    servers = "metrics: {enabled: false}\nconsole: {enabled: false}\n"
    servers += 'servers: [{name: talk, handler: "tests.test_logs:chatty", port: 0}]\n'
    block = _readme_dict_config()
    assert not Path("/var/log/app").exists()  # as on a machine where the folder was not made yet
    as_written = tmp_path / "as_written.yaml"
    as_written.write_text(block + servers)
    with SupervisorProcess(as_written) as sp:
        assert sp.wait() == 2
    assert sp.output.splitlines()[0] == (
        f"{as_written}:2: logging.dict_config: Unable to configure handler 'file': [Errno 2] No such file or "
        "directory: '/var/log/app/supervisor.log'; fix the mapping (it is logging.config.dictConfig's schema)"
    )
    log = tmp_path / "supervisor.log"
    moved = tmp_path / "moved.yaml"
    moved.write_text(block.replace("/var/log/app/supervisor.log", str(log)) + servers)
    with SupervisorProcess(moved) as sp:
        port = int(_wait_for_line(log, r"server talk listening on 127\.0\.0\.1:(\d+) \(generation 1\)")[1])
        assert ask_sync(port, b"hi\n") == b"hi\n"
        _wait_for_line(log, r" INFO \[talk#1\] app: got b'hi'$")
        sp.wait_for(r'"message": "got b\'hi\'", "server": "talk", "generation": 1')  # the JSON stream handler
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0


def ask_sync(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        return conn.recv(100)
