"""The one rule for what is a client's doing: an error raised inside a stream object (a reader, writer, stream
protocol or transport) is the peer's, never the server's failure; anything else a handler raised is its own."""

from __future__ import annotations

import asyncio
import ssl

from supervisor.errors import IdleTimeout
from supervisor.streams import Reader

# Why the supervisor closed a connection, or how a client broke it: the label values of
# supervisor_client_errors_total, all exported from the first scrape.
CLIENT_REASONS = ("too_long", "incomplete", "reset", "tls", "idle_timeout", "write_buffer", "other")

# Errors raised inside our own stream objects that are still the handler's mistakes (a wrong argument). Not
# RuntimeError: uvloop raises it for a write to a transport the client already closed.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, AssertionError)


def client_fault(exc: BaseException, reader: Reader, writer: asyncio.StreamWriter) -> str | None:
    """The CLIENT_REASONS value if ``exc`` is a client's doing, else None (the handler's own failure).

    The rule is where the error was raised, not a list of types: inside a stream object -- a reader, writer,
    stream protocol or transport -- (a line over the limit, a reset while reading or flushing, a TLS error,
    end-of-stream in the middle of readexactly()) it is a peer's; anywhere else it is the handler's code. A peer
    may be another connection the handler writes to (a chat broadcast, a gateway's upstream): its reset is not
    this server's failure either. Mistakes in calling the stream API (a wrong argument) stay the handler's.
    Walking the traceback costs something only when a handler already failed.
    """
    if reader.ended_by:
        return reader.ended_by
    if isinstance(exc, _PROGRAMMING_ERRORS):
        return None
    if isinstance(exc, ValueError) and not isinstance(exc.__context__, asyncio.LimitOverrunError):
        return None  # readline() turns an over-long line into ValueError; any other ValueError is a bad call
    tb = exc.__traceback__
    while tb is not None:
        if isinstance(tb.tb_frame.f_locals.get("self"), _STREAM_OBJECTS):
            return _reason(exc)
        tb = tb.tb_next
    return None


# the stdlib's stream classes and any transport (asyncio's, uvloop's, TLS): not a user's own Protocol class
_STREAM_OBJECTS = (asyncio.StreamReader, asyncio.StreamWriter, asyncio.streams.FlowControlMixin, asyncio.BaseTransport)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, IdleTimeout):
        return "idle_timeout"
    if isinstance(exc, ValueError | asyncio.LimitOverrunError):  # readline() turns LimitOverrunError into this
        return "too_long"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "incomplete"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, ConnectionError | OSError | RuntimeError):  # uvloop: RuntimeError writing to a closed one
        return "reset"
    return "other"
