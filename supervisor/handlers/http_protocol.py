"""The HTTP/1.1 demo of ``handlers/http.py`` as an ``asyncio.Protocol`` (``kind: protocol``): the same answers.

``GET /`` answers ``hello`` (option ``body``), ``GET /sleep?s=1.5`` after that many seconds (at most 60), anything
else 404; a head over 16 KiB is 431; request bodies are refused (400). Keep-alive, ``Connection: close`` and
HTTP/1.0 as in the stream version. Requests are answered one at a time, in order: bytes that arrive while a
``/sleep`` is pending wait in the buffer (reading is paused above the head limit).

The drain contract (README, "The protocol kind"): :meth:`HttpProtocol.drain` closes an idle connection at once
and lets a request in flight finish its response, then closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from supervisor.handlers.http import MAX_SLEEP, _response, _seconds

_HEAD_LIMIT = 16 * 1024


def make(options: Mapping[str, Any]) -> Callable[[], HttpProtocol]:
    """``handler: supervisor.handlers.http_protocol:make`` with ``kind: protocol``; option ``body``."""
    body = str(options.get("body", "hello\n")).encode()
    hello = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(body)
    # one subclass per generation carries the responses: no per-connection closure or attribute for them
    return type("HttpProtocol", (HttpProtocol,), {"hello": hello, "body": body, "__slots__": ()})


class HttpProtocol(asyncio.Protocol):
    hello = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n"
    body = b"hello\n"
    __slots__ = ("buffer", "busy", "draining", "paused", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy: asyncio.TimerHandle | None = None  # a /sleep in flight
        self.draining = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # the common case, one whole request per segment and nothing buffered, costs no concatenation
        self.buffer = self.buffer + data if self.buffer else data
        if self.busy is None:
            self._serve()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close once what we wrote is flushed

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy is not None:
            self.busy.cancel()
            self.busy = None
        self.transport = None

    def drain(self) -> None:
        """Called once by the supervisor when this generation drains: close now if idle, else after the answer."""
        self.draining = True
        if self.busy is None and self.transport is not None:
            self.transport.close()

    def _serve(self) -> None:
        transport = self.transport
        while transport is not None and not transport.is_closing():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _HEAD_LIMIT:
                    self._finish(_response(431, b"headers too large\n", close=True), close=True)
                elif self.draining and not self.buffer:
                    transport.close()
                return
            head, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
            if len(head) > _HEAD_LIMIT:
                self._finish(_response(431, b"headers too large\n", close=True), close=True)
                return
            request_line, _, rest = head.partition(b"\r\n")
            parts = request_line.split(b" ")
            if len(parts) != 3:
                self._finish(_response(400, b"bad request\n", close=True), close=True)
                return
            method, target, version = parts
            lower = rest.lower()
            close = b"connection: close" in lower or (version == b"HTTP/1.0" and b"keep-alive" not in lower)
            if b"content-length:" in lower or b"transfer-encoding:" in lower:
                self._finish(_response(400, b"request bodies are not supported\n", close=True), close=True)
                return
            path, _, query = target.partition(b"?")
            if method != b"GET" and method != b"HEAD":
                self._finish(_response(405, b"method not allowed\n", close=close), close=close)
            elif path == b"/":
                end_head = b"Connection: close\r\n\r\n" if close else b"\r\n"
                answer = self.hello + end_head
                self._finish(answer + self.body if method == b"GET" else answer, close=close)
            elif path == b"/sleep":
                seconds = min(_seconds(query), MAX_SLEEP)
                loop = asyncio.get_running_loop()
                self.busy = loop.call_later(seconds, self._slept, seconds, close)
                if len(self.buffer) > _HEAD_LIMIT and not self.paused:
                    self.paused = True  # a pipelining client waits for the answer, it cannot fill our memory
                    transport.pause_reading()
                return
            else:
                self._finish(_response(404, b"not found\n", close=close), close=close)

    def _slept(self, seconds: float, close: bool) -> None:
        self.busy = None
        if self.transport is None:
            return
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        close = close or self.draining
        self._finish(_response(200, b"slept %g\n" % seconds, close=close), close=close)
        self._serve()

    def _finish(self, answer: bytes, *, close: bool) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(answer)
        if close:
            transport.close()
