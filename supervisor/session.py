"""One client connection on a generation -- the per-connection path, kept lean: admit it (max_connections),
bound it (idle_timeout, max_write_buffer), count and register it for the drain, run the handler, classify what
it raised (a client's doing is never the server's failure), close it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from supervisor.errors import StopServer
from supervisor.handler import set_current
from supervisor.streams import Reader, bound_writer, client_fault
from supervisor.throttle import folded

if TYPE_CHECKING:
    from supervisor.generation import Generation

LOGGER = logging.getLogger("supervisor")


async def serve(gen: Generation, reader: Reader, writer: asyncio.StreamWriter) -> None:
    """Serve one accepted connection with ``gen``'s handler; the listener's protocol calls it (gen.serve)."""
    if gen.stopped:
        # accepted in the instant this generation stopped: the next one serves it
        await gen.listener.dispatch(reader, writer)
        return
    if not reader.admitted and not gen.listener.admit(writer):
        return
    task = asyncio.current_task()
    assert task is not None
    assert gen.handler is not None
    set_current(gen.ctx)  # the Server was made outside this generation: give handlers its context
    plan = gen.plan
    loop = asyncio.get_running_loop()
    started = reader.accepted_at = loop.time()
    reader.owner = gen
    if plan.idle_timeout:
        reader.arm_idle_timeout(plan.idle_timeout)
    if plan.max_write_buffer:
        bound_writer(writer, plan.max_write_buffer)
    conns = gen.conns
    conns.add(task, reader, writer)
    stats = gen.stats
    stats.active += 1
    stats.total += 1
    try:
        try:
            await gen.handler(reader, writer)
        except StopServer as exc:
            gen.stop(exc)
        except Exception as exc:  # noqa: BLE001 - whatever a handler raised is classified and counted here
            _handler_failed(gen, exc, reader, writer)
        if reader.ended_by:
            stats.client_errors[reader.ended_by] += 1
        transport = writer.transport
        if not transport.is_closing():
            # once only: a second close() of a TLS transport drops its protocol, and its buffer size with it
            transport.close()
        try:
            unsent = transport.get_write_buffer_size()
        except AttributeError:  # asyncio's TLS transport after a handler closed it twice: nothing left to send
            unsent = 0
        if unsent:
            # a slow reader is still owed bytes: stay in the registry, so the drain bounds it
            await writer.wait_closed()
    except asyncio.CancelledError:
        if not conns.cancelling:
            raise
        # We cancelled it at the end of a drain. Ending quietly here is what stops 3.11.7 from
        # logging a CancelledError traceback per connection (CPython gh-113538).
        writer.transport.abort()
    except (ConnectionError, OSError):
        pass  # the client went away while we flushed
    finally:
        if plan.idle_timeout:
            reader.disarm()
        conns.remove(task)
        stats.active -= 1
        stats.observe_duration(loop.time() - started)
        if not writer.transport.is_closing():
            writer.close()


def _handler_failed(gen: Generation, exc: Exception, reader: Reader, writer: asyncio.StreamWriter) -> None:
    if reader.drained and isinstance(exc, asyncio.IncompleteReadError):
        return  # the end-of-stream our drain gave a handler waiting between messages: nobody's fault
    if (reason := client_fault(exc, reader, writer)) is not None:
        # what a client sends, or how it leaves, is never the server's failure: close, count, one line at most
        if not reader.ended_by:
            gen.stats.client_errors[reason] += 1
        LOGGER.debug("server %s: client error (%s): %r", gen.plan.name, reason, exc)
        return
    gen.stats.handler_errors += 1
    if gen.plan.on_handler_error == "restart" and not gen.stopped:
        gen.stop(exc)  # the coordinator logs it as this server's failure
    elif (more := gen.listener.throttle(type(exc).__name__)) is not None:
        LOGGER.warning(
            "server %s: handler error, connection closed: %r%s", gen.plan.name, exc, folded(more), exc_info=exc
        )
