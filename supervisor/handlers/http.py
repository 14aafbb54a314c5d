"""A small HTTP/1.1 responder with keep-alive.

``GET /`` answers ``hello``; ``GET /sleep?s=1.5`` answers after that many seconds (at most 60), which
makes in-flight requests easy to produce when trying a graceful shutdown. Anything else is a 404. A request
head must arrive within ``header_timeout`` (default 10 s): idle keep-alive connections and slowloris clients
are closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from supervisor.handler import Handler
from supervisor.values import parse_duration

MAX_SLEEP = 60.0
HEADER_TIMEOUT = 10.0  # seconds (option header_timeout)
_HEAD_LIMIT = 16 * 1024


def make(options: Mapping[str, Any]) -> Handler:
    body = str(options.get("body", "hello\n")).encode()
    # The whole head of a request must arrive within this, counted from when the handler starts waiting
    # for it, so it also ends idle keep-alive connections. A slowloris (a byte every few seconds) is cut here.
    header_timeout = parse_duration(options.get("header_timeout", HEADER_TIMEOUT))
    hello = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(header_timeout):
                        head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # client closed (or the server is draining) between requests
                except TimeoutError:
                    break  # idle keep-alive, or a head trickling in: close (as nginx does), no answer
                except asyncio.LimitOverrunError:
                    writer.write(_response(431, b"headers too large\n", close=True))
                    break
                if len(head) > _HEAD_LIMIT:
                    writer.write(_response(431, b"headers too large\n", close=True))
                    break
                request_line, _, rest = head.partition(b"\r\n")
                parts = request_line.split(b" ")
                if len(parts) != 3:
                    writer.write(_response(400, b"bad request\n", close=True))
                    break
                method, target, version = parts
                lower = rest.lower()
                close = b"connection: close" in lower or (version == b"HTTP/1.0" and b"keep-alive" not in lower)
                if b"content-length:" in lower or b"transfer-encoding:" in lower:
                    writer.write(_response(400, b"request bodies are not supported\n", close=True))
                    break
                path, _, query = target.partition(b"?")
                if method != b"GET" and method != b"HEAD":
                    writer.write(_response(405, b"method not allowed\n", close=close))
                elif path == b"/":
                    # one write, one send(): a response split over two writes costs a syscall more
                    end = b"Connection: close\r\n\r\n" if close else b"\r\n"
                    writer.write(hello + end + body if method == b"GET" else hello + end)
                elif path == b"/sleep":
                    seconds = _seconds(query)
                    await asyncio.sleep(seconds)
                    writer.write(_response(200, b"slept %g\n" % seconds, close=close))
                else:
                    writer.write(_response(404, b"not found\n", close=close))
                await writer.drain()
                if close:
                    break
        finally:
            writer.close()

    return handle


def _seconds(query: bytes) -> float:
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == b"s":
            try:
                return max(0.0, min(MAX_SLEEP, float(value)))
            except ValueError:
                return 0.0
    return 0.0


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 431: b"Too Large"}


def _response(status: int, body: bytes, *, close: bool) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % (
        status,
        _REASONS[status],
        len(body),
    )
    return head + (b"Connection: close\r\n\r\n" if close else b"\r\n") + body
