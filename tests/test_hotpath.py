"""The lean per-connection path (session.py, streams.py), proved by what a handler can observe: its coroutine is
the connection's task itself, it sees its generation through current_server() while its own context variables
stay its own, and its reader and writer are made as the classes they serve as (an object whose ``__class__`` is
assigned loses the interpreter's specialized attribute loads: 82.7k -> 71.1k instructions per request on uvloop
once nothing was switched, callgrind, README Benchmarks)."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path

from supervisor import current_server
from supervisor.streams import BoundedWriter, Reader
from tests.helpers import DEADLINE, ask, plan_from, port_of, running

MINE: contextvars.ContextVar[str] = contextvars.ContextVar("mine", default="unset")
Classes = tuple[type, type]
SEEN: list[tuple[str, str, str, tuple[Classes, Classes, object]]] = []


async def observe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each line with what the handler saw: its task, server, context, and its stream objects' classes."""
    task = asyncio.current_task()
    assert task is not None
    coro = task.get_coro()
    before = MINE.get()
    MINE.set(f"set by {id(writer)}")  # must not leak into another connection's handler
    classes = (type(reader), type(writer))
    while line := await reader.readline():
        seen = (classes, (type(reader), type(writer)), getattr(reader, "_fresh", None))
        SEEN.append((getattr(coro, "__name__", "?"), current_server().name, before, seen))
        writer.write(line)
        await writer.drain()
    writer.close()


CONFIG = """
servers:
  - {name: observed, handler: "tests.test_hotpath:observe", port: 0}
"""


async def test_the_handler_is_the_connection_task_and_keeps_its_context_to_itself(tmp_path: Path) -> None:
    SEEN.clear()
    async with running(plan_from(tmp_path, CONFIG)) as sup:
        port = port_of(sup, "observed")
        assert await ask(port, b"one") == b"one\n"
        assert await ask(port, b"two") == b"two\n"
    assert [s[:3] for s in SEEN] == [("observe", "observed", "unset"), ("observe", "observed", "unset")]
    for _, _, _, (made, serving, fresh) in SEEN:
        assert made == serving  # nothing switched a class while serving
        reader_cls, writer_cls = made
        assert reader_cls is Reader
        assert issubclass(writer_cls, BoundedWriter)
        assert writer_cls.limit == 8 * 1024 * 1024  # made bounded, by the default max_write_buffer
        assert fresh is False  # its first byte was noted


async def test_a_reader_keeps_its_class_at_its_first_byte_and_grows_one_attribute() -> None:
    reader = Reader(2**16, asyncio.get_running_loop())
    reader.feed_data(b"a")
    assert type(reader) is Reader
    assert vars(reader).keys() <= vars(Reader(2**16, asyncio.get_running_loop())).keys() | {"_buffer", "_fresh"}
    async with asyncio.timeout(DEADLINE):
        assert await reader.read(1) == b"a"
