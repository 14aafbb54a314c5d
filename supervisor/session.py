"""One client connection on a generation -- the per-connection path, kept lean: admit it (max_connections),
bound it (idle_timeout, max_write_buffer), count and register it for the drain, run the handler, classify what
it raised (a client's doing is never the server's failure), close it.

The handler's coroutine is the connection's task itself, as under a bare ``asyncio.start_server``: no coroutine of
ours wraps it, so a task step resumes one frame fewer (measured: it was ~3% of the server's CPU per keep-alive
request) and an idle connection holds no frame of ours. The bookkeeping runs once in :func:`accept` (called by
the StreamReaderProtocol when the connection is made) and once in the task's done callback (:func:`finished`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from supervisor.client_faults import client_fault
from supervisor.errors import StopServer
from supervisor.streams import FRESH_WINDOW, Reader, bound_writer
from supervisor.throttle import folded

if TYPE_CHECKING:
    from supervisor.generation import Generation

LOGGER = logging.getLogger("supervisor")


def accept(gen: Generation, reader: Reader, writer: asyncio.StreamWriter) -> None:
    """Start serving one connection with ``gen``'s handler; the listener's protocol calls it (gen.accept)."""
    if gen.stopped:
        if not gen.listener.inherits(gen):
            # accepted in the instant this generation stopped: the next one serves it
            gen.listener.park(reader, writer)
            return
        late(gen, reader)
    if not reader.admitted and not gen.listener.admit(writer):
        return
    assert gen.handler is not None
    plan = gen.plan
    loop = gen.loop
    reader.accepted_at = loop.time()
    reader.owner = gen
    if plan.idle_timeout:
        reader.arm_idle_timeout(plan.idle_timeout)
    if plan.max_write_buffer:
        bound_writer(writer, plan.max_write_buffer)
    try:
        coro = gen.handler(reader, writer)
    except Exception as exc:  # noqa: BLE001 - an object whose __call__ raised: a handler error like any other
        _handler_failed(gen, exc, reader, writer)
        writer.transport.close()
        return
    # the generation's context (current_server()), copied: a handler's own context variables stay its own
    task: asyncio.Task[None] = loop.create_task(coro, context=gen.context.copy())
    gen.conns.add(task, reader, writer)
    stats = gen.stats
    stats.active += 1
    stats.total += 1
    task.add_done_callback(gen.finished)


def late(gen: Generation, reader: Reader) -> None:
    """A connection the stopped ``gen`` inherits (its listener closed for good). If its drain has begun, nothing
    else will look at it again: past FRESH_WINDOW (a little more: timers may fire a clock tick early) an idle one
    reads end-of-stream. A drain not begun yet covers it like the others."""
    if gen.draining and gen.spare_fresh:
        gen.loop.call_later(FRESH_WINDOW * 1.05, reader.eof_if_idle)


def finished(gen: Generation, task: asyncio.Task[Any]) -> None:
    """The handler's task ended: classify how, close the connection, and leave the registry (after the flush)."""
    reader, writer = gen.conns.get(task)
    transport = writer.transport
    if task.cancelled():
        # we cancelled it at the end of a drain (or the loop is closing): nothing left to say
        transport.abort()
    elif (exc := task.exception()) is not None:
        if isinstance(exc, StopServer):
            gen.stop(exc)
        elif isinstance(exc, Exception):
            _handler_failed(gen, exc, reader, writer)
    if reader.ended_by:
        gen.stats.client_errors[reader.ended_by] += 1
    if not transport.is_closing():
        # once only: a second close() of a TLS transport drops its protocol, and its buffer size with it
        transport.close()
    try:
        unsent = transport.get_write_buffer_size()
    except AttributeError:  # asyncio's TLS transport after a handler closed it twice: nothing left to send
        unsent = 0
    if unsent:
        # a slow reader is still owed bytes: stay in the registry, so the drain bounds it (rare: a task here)
        # (the drain's abort of every registered transport ends the wait; the pending write keeps the task alive)
        gen.loop.create_task(_flushed(gen, task, reader, writer))
        return
    _leave(gen, task, reader)


async def _flushed(gen: Generation, task: asyncio.Task[Any], reader: Reader, writer: asyncio.StreamWriter) -> None:
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass  # the client went away while we flushed
    except asyncio.CancelledError:
        writer.transport.abort()  # the drain's budget is used up: cut the slow reader off
    finally:
        _leave(gen, task, reader)


def _leave(gen: Generation, task: asyncio.Task[Any], reader: Reader) -> None:
    if gen.plan.idle_timeout:
        reader.disarm()
    gen.conns.remove(task)
    stats = gen.stats
    stats.active -= 1
    stats.observe_duration(gen.loop.time() - reader.accepted_at)


def _handler_failed(gen: Generation, exc: Exception, reader: Reader, writer: asyncio.StreamWriter) -> None:
    if reader.drained and isinstance(exc, asyncio.IncompleteReadError):
        return  # the end-of-stream our drain gave a handler waiting between messages: nobody's fault
    if (reason := client_fault(exc, reader, writer)) is not None:
        # what a client sends, or how it leaves, is never the server's failure: close, count, one line at most
        if not reader.ended_by:
            gen.stats.client_errors[reason] += 1
        LOGGER.debug("server %s: client error (%s): %r", gen.plan.name, reason, exc)
        return
    gen.stats.handler_failed(exc, gen.loop.time())
    if gen.plan.on_handler_error == "restart" and not gen.stopped:
        gen.stop(exc)  # the coordinator logs it as this server's failure
    elif (more := gen.listener.throttle(type(exc).__name__)) is not None:
        LOGGER.warning(
            "server %s: handler error, connection closed: %r%s", gen.plan.name, exc, folded(more), exc_info=exc
        )
