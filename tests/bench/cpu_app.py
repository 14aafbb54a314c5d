"""A CPU-bound HTTP keep-alive hello for the workers benchmark: about ``options['work_ms']`` (default 0.5) of pure
Python computation per request, so the server's CPU, not wrk, is the limit and a second worker can show."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nhello\n"


def make(options: Mapping[str, Any]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    work = float(options.get("work_ms", 0.5)) / 1000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                end = time.perf_counter() + work
                n = 0
                while time.perf_counter() < end:  # busy: the work a real handler would do (parse, render, hash)
                    n += 1
                writer.write(RESPONSE)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handle
