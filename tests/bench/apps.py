"""Handlers shared by the benchmark's two contenders (our supervisor and the bare seed pattern).

``crashy`` answers every line with ``ok <pid>.<generation>`` and raises on the line ``crash``: the reply tells the
benchmark's prober which server generation (ours) or which process (the seed) served it, so "served again after
the crash" means "served by a *new* generation/process", never by the one that is still winding down.

This module must stay cheap to import: the seed's naive restart re-imports it in every new process, and
importing the ``supervisor`` package there would slow the seed down for no reason of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys


class CrashRequestedError(RuntimeError):
    """What ``crashy`` raises when a client sends ``crash``."""


def _token() -> bytes:
    generation = 0
    handler_module = sys.modules.get("supervisor.handler")  # loaded only when our supervisor runs the handler
    if handler_module is not None:
        with contextlib.suppress(LookupError):
            generation = handler_module.current_server().generation
    return f"{os.getpid()}.{generation}".encode()


async def crashy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Line protocol: ``crash`` raises :class:`CrashRequestedError`; any other line gets ``ok <pid>.<generation>``."""
    reply = b"ok " + _token() + b"\n"
    try:
        while line := await reader.readline():
            if line.strip() == b"crash":
                raise CrashRequestedError("crash requested by the benchmark client")
            writer.write(reply)
            await writer.drain()
    except ConnectionError:
        pass  # a client going away is not a handler failure (it would restart the server under `restart`)
    finally:
        writer.close()
