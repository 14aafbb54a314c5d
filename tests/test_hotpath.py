"""The lean per-connection path (session.py, streams.py), proved by what a handler can observe: its coroutine is
the connection's task itself, it sees its generation through current_server() while its own context variables
stay its own, and the reader pays nothing per segment once its first byte came."""

from __future__ import annotations

import asyncio
import contextvars
from pathlib import Path

from supervisor import current_server
from supervisor.streams import Reader
from tests.helpers import DEADLINE, ask, plan_from, port_of, running

MINE: contextvars.ContextVar[str] = contextvars.ContextVar("mine", default="unset")
SEEN: list[tuple[str, str, str, str]] = []


async def observe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each line with what the handler saw: before the first byte, reader is fresh; then it is not."""
    task = asyncio.current_task()
    assert task is not None
    coro = task.get_coro()
    before = MINE.get()
    MINE.set(f"set by {id(writer)}")  # must not leak into another connection's handler
    while line := await reader.readline():
        SEEN.append((getattr(coro, "__name__", "?"), current_server().name, before, type(reader).__name__))
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
    # after the first segment the reader is a Reader still, but not the class that watches for the first byte
    assert all(s[3] != "Reader" for s in SEEN)


async def test_a_reader_changes_class_at_its_first_byte_and_grows_no_attribute() -> None:
    reader = Reader(2**16, asyncio.get_running_loop())
    fresh = type(reader)
    reader.feed_data(b"a")
    assert isinstance(reader, Reader)
    assert type(reader) is not fresh
    assert vars(reader).keys() <= vars(Reader(2**16, asyncio.get_running_loop())).keys() | {"_buffer"}
    async with asyncio.timeout(DEADLINE):
        assert await reader.read(1) == b"a"
