"""Helpers for in-process tests: build a plan from YAML text, run a Supervisor, talk to its servers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from supervisor import Supervisor
from supervisor.config import load_config
from supervisor.plan import Plan, make_plan
from supervisor.state import ChildState
from supervisor.tree import View

DEADLINE = 10.0


def plan_from(tmp_path: Path, text: str) -> Plan:
    """A plan from YAML text; in-process tests have no metrics or console unless the text turns them on."""
    return make_plan(load_config(write_config_file(tmp_path, text)))


def write_config_file(tmp_path: Path, text: str) -> Path:
    """Write the file ``plan_from`` reads (a reload re-reads it): metrics and console off unless turned on."""
    text = textwrap.dedent(text)
    for view in ("metrics", "console"):
        if not re.search(rf"^{view}:", text, re.MULTILINE):
            text = f"{view}: {{enabled: false}}\n{text}"
    path = tmp_path / "supervisor.yaml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def served(
    plan: Plan, *views: View, clock: Callable[[], float] | None = None
) -> AsyncIterator[tuple[Supervisor, list[object]]]:
    """Like ``app.run_plan`` without signal handlers: enter ``views``, serve until the block ends, stop in order.

    Yields the supervisor (ready) and what each view yielded.
    Whatever ``serve()`` raised (``GaveUp``, a bug in the coordinator) is raised from the block's end, so a
    test cannot pass over a supervisor that failed; a test that expects a give-up says so with ``pytest.raises``.
    If the block itself failed, its error wins and the supervisor's is added to it as a note.
    """
    sup = Supervisor(plan, clock=clock)
    async with contextlib.AsyncExitStack() as stack:
        entered = [await stack.enter_async_context(view(plan, sup)) for view in views]
        task = asyncio.create_task(sup.serve(), name="supervisor")
        try:
            async with asyncio.timeout(DEADLINE):
                await asyncio.wait((sup.ready, task), return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                task.result()  # raises what went wrong at startup
            yield sup, entered
        except BaseException as exc:
            await _stop(sup, task)
            if not task.cancelled() and (failure := task.exception()) is not None:
                exc.add_note(f"the supervisor's serve() raised too: {failure!r}")
            raise
        await _stop(sup, task)
        task.result()  # a give-up or a crash of the supervisor fails the test


async def _stop(sup: Supervisor, task: asyncio.Task[None]) -> None:
    sup.request_stop("test")
    async with asyncio.timeout(DEADLINE + 30):
        await asyncio.wait((task,))


@contextlib.asynccontextmanager
async def running(plan: Plan, *, clock: Callable[[], float] | None = None) -> AsyncIterator[Supervisor]:
    """Serve ``plan`` until the block ends, then shut down in order (raising what ``serve()`` raised)."""
    async with served(plan, clock=clock) as (sup, _):
        yield sup


def port_of(sup: Supervisor, name: str) -> int:
    child = sup.snapshot().child(name)
    assert child is not None
    return int(child.address.rsplit(":", 1)[1])


async def ask(port: int, line: bytes, *, timeout: float = DEADLINE, host: str = "127.0.0.1") -> bytes:
    """Open a connection, send one line, return the first line of the answer (b'' at EOF)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(line + b"\n")
            await writer.drain()
            return await reader.readline()
        finally:
            writer.close()


async def wait_state(sup: Supervisor, name: str, state: ChildState, *, generation: int = 0) -> None:
    """Wait until server ``name`` is in ``state`` (and at least at ``generation``), with a deadline."""
    async with asyncio.timeout(DEADLINE):
        while True:
            child = sup.snapshot().child(name)
            assert child is not None
            if child.state is state and child.generation >= generation:
                return
            await sup.changed()


async def assert_not_served(port: int) -> None:
    """Nobody serves ``port``: refused, or reset if the connect landed in the instant the listener closed."""
    try:
        answer = await ask(port, b"anyone?")
    except (ConnectionRefusedError, ConnectionResetError):
        return
    assert answer == b"", f"port {port} answered {answer!r}"


async def eventually(condition: Callable[[], bool], *, timeout: float = DEADLINE) -> None:
    """Wait until ``condition()`` holds, with a deadline, for what publishes no event: the per-server counters are
    plain ints bumped on the per-connection path, and on purpose nothing is signalled when they change."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - see the docstring: there is no event to wait on
            await asyncio.sleep(0.005)
